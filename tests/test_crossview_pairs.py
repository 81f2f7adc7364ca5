"""Images to tensors and Sample4Geo's paired augmentation (geoloc/data/crossview/pairs.py): a quarter
turn of the tile is a quarter roll of the panorama and a mirror is a mirror, checked on the offline
benchmark's own colour field rendered through both projections."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from geoloc.data.cache import DataError
from geoloc.data.crossview.offline import ColourField, panorama_points, tile_points
from geoloc.data.crossview.pairs import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PairAugmentation,
    PairDataset,
    augmentation_rng,
    draw_augmentation,
    image_loader,
    load_image,
    pair_loader,
)
from tests.crossviewutil import read_cvusa_layout, tiny_benchmark

TURN = np.array([[0.0, 1.0], [-1.0, 0.0]])  # (east, north) -> (north, -east): the point a turned tile shows
MIRROR = np.array([[-1.0, 0.0], [0.0, 1.0]])  # east <-> west


def _views(field: ColourField, place: np.ndarray, transform: np.ndarray, tile: int = 16, height: int = 8, width=32):
    """Tile and panorama (3, H, W) of the field seen through ``transform``: the image at p shows field(transform p)."""
    images = []
    for points in (tile_points(tile, 0.4), panorama_points(height, width, 0.4)):
        colours = field.render(place, points @ transform.T)[0]
        images.append(torch.from_numpy(colours.astype(np.float64)).permute(2, 0, 1))
    return images


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("rotation", [0, 1, 2, 3])
def test_augmented_pair_is_the_pair_of_the_turned_field(flip, rotation):
    field = ColourField(np.random.default_rng(0), 0.4)
    place = np.array([[48.8566, 2.3522]])
    tile, pano = _views(field, place, np.eye(2))
    # The images are mirrored, then turned: the new image at p shows the old one at MIRROR @ TURN^k @ p.
    transform = (MIRROR if flip else np.eye(2)) @ np.linalg.matrix_power(TURN, rotation)
    want_tile, want_pano = _views(field, place, transform)
    aug = PairAugmentation(flip, rotation)
    got_pano, got_tile = aug.pair(pano, tile)
    torch.testing.assert_close(got_tile, want_tile, atol=2e-5, rtol=0)
    torch.testing.assert_close(got_pano, want_pano, atol=2e-5, rtol=0)
    if not aug.identity:  # the check can fail: the field is not symmetric
        assert (got_tile - tile).abs().max() > 0.05


def test_planted_marks():
    # A mark east of the place: in the tile, the middle row's east edge; in the panorama, the column at
    # azimuth 90 degrees (3/4 of the width). One quarter turn brings both to the north.
    tile, pano = torch.zeros(1, 4, 4), torch.zeros(1, 2, 8)
    tile[0, 1, 3], pano[0, 0, 6] = 1, 1
    new_pano, new_tile = PairAugmentation(rotation=1).pair(pano, tile)
    assert new_tile[0, 0, 1] == 1 and new_pano[0, 0, 4] == 1  # top row (north); the column right of north
    flipped_pano, flipped_tile = PairAugmentation(flip=True).pair(pano, tile)
    assert flipped_tile[0, 1, 0] == 1 and flipped_pano[0, 0, 1] == 1  # west


def test_load_image_known_values(tmp_path):
    pixels = np.zeros((2, 3, 3), dtype=np.uint8)
    pixels[0, 1] = (255, 0, 51)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png", (2, 3))
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    want = (np.array([1.0, 0.0, 0.2]) - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(x[:, 0, 1].numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(x[:, 1, 1].numpy(), -np.array(IMAGENET_MEAN) / IMAGENET_STD, rtol=1e-6)
    assert load_image(tmp_path / "a.png", (4, 6)).shape == (3, 4, 6)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.png"):
        load_image(tmp_path / "bad.png", (2, 3))


def test_imagenet_constants_are_timms_convnext_config():
    import timm

    cfg = timm.get_pretrained_cfg("convnext_base.fb_in22k_ft_in1k_384")
    assert tuple(cfg.mean) == IMAGENET_MEAN and tuple(cfg.std) == IMAGENET_STD


def test_draws_are_seeded_with_sample4geos_probabilities():
    draws = [draw_augmentation(augmentation_rng(3, 0, i)) for i in range(4000)]
    assert draws == [draw_augmentation(augmentation_rng(3, 0, i)) for i in range(4000)]
    assert abs(np.mean([d.flip for d in draws]) - 0.5) < 0.03
    rotations = np.bincount([d.rotation for d in draws], minlength=4) / len(draws)
    np.testing.assert_allclose(rotations, [0.25, 0.25, 0.25, 0.25], atol=0.03)


def test_pair_dataset_and_loaders(tmp_path):
    _, folder = tiny_benchmark(tmp_path)
    split = read_cvusa_layout(folder, "val")
    plain = PairDataset(split, (16, 64), (32, 32))
    q, r = plain[3]
    torch.testing.assert_close(q, load_image(split.queries[3], (16, 64)), rtol=0, atol=0)
    torch.testing.assert_close(r, load_image(split.references[3], (32, 32)), rtol=0, atol=0)
    # Augmentations passed in, or drawn from (seed, epoch, index): reproducible, new each epoch.
    given = PairDataset(split, (16, 64), (32, 32), augmentations=[PairAugmentation(True, 1)] * len(split))
    for got, want in zip(given[3], PairAugmentation(True, 1).pair(q, r), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    seeded = PairDataset(split, (16, 64), (32, 32), seed=5)
    first = [seeded.augmentation(k) for k in range(len(split))]
    assert first == [PairDataset(split, (16, 64), (32, 32), seed=5).augmentation(k) for k in range(len(split))]
    seeded.set_epoch(1)
    assert [seeded.augmentation(k) for k in range(len(split))] != first
    for got, want in zip(seeded[3], seeded.augmentation(3).pair(q, r), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # Batches of pairs, augmented from one seed per batch; the evaluation loader in order, unaugmented.
    ((bq, br),) = list(pair_loader(split, [[3, 1]], [9], query_size=(16, 64), reference_size=(32, 32)))
    rng = augmentation_rng(9)
    for k, i in enumerate([3, 1]):
        want_q, want_r = draw_augmentation(rng).pair(*plain[i])
        torch.testing.assert_close(bq[k], want_q, rtol=0, atol=0)
        torch.testing.assert_close(br[k], want_r, rtol=0, atol=0)
    batches = list(image_loader(split.references, (32, 32), 4))
    assert [len(b) for b in batches] == [4, 4, 2]
    torch.testing.assert_close(batches[0][3], r, rtol=0, atol=0)
