"""Cached mode's feature extraction (geoloc/data/crossview/extract.py) with a tiny random timm ConvNeXt
on the tiny offline benchmark: shapes and coordinates, view 0 and an augmented view against the
backbone applied by hand, paired views, reuse, and an interrupted extraction resumed to the same bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoloc.data.cache import DataError
from geoloc.data.crossview.extract import extract_crossview, pooled_features, view_augmentation
from geoloc.data.crossview.pairs import load_image
from tests.crossviewutil import read_cvusa_layout, tiny_benchmark

QUERY, REFERENCE = (32, 64), (32, 32)  # ConvNeXt downsamples by 32: the 16 x 64 panoramas are resized
IDENTITY = {"backbone": "test_convnext3", "weights": "random-0"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import timm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: a second thread on a shared machine costs seconds
    torch.manual_seed(0)
    backbone = timm.create_model("test_convnext3", pretrained=False, num_classes=0).eval()
    _, folder = tiny_benchmark(tmp_path_factory.mktemp("bench"))
    yield read_cvusa_layout(folder, "val"), backbone
    torch.set_num_threads(threads)


def _extract(split, backbone, out, **kw):
    args = dict(views=3, query_size=QUERY, reference_size=REFERENCE, seed=4, batch_size=3, device="cpu")
    return extract_crossview(split, lambda: backbone, out, identity=IDENTITY, shard_size=4, **(args | kw))


def test_caches_hold_the_backbones_features_of_paired_views(setup, tmp_path):
    split, backbone = setup
    stats = {}
    queries, references = _extract(split, backbone, tmp_path / "c", stats=stats)
    assert stats["images"] == 2 * len(split)
    n, dim = len(split), backbone.num_features
    assert queries.features.shape == references.features.shape == (n, 3, dim)
    assert queries.features.dtype == np.float16
    np.testing.assert_array_equal(queries.coords, split.query_coords)
    np.testing.assert_array_equal(references.coords, split.reference_coords)
    np.testing.assert_array_equal(np.load(queries.path / "positive.npy"), split.positive)
    assert queries.manifest["backbone"] == "test_convnext3" and queries.manifest["role"] == "queries"

    def by_hand(image: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return pooled_features(backbone, image[None])[0].numpy()

    i = 7
    j = int(split.positive[i])
    tile, pano = load_image(split.references[j], REFERENCE), load_image(split.queries[i], QUERY)
    for v in range(3):
        aug = view_augmentation(4, j, v)
        assert aug.identity == (v == 0)
        np.testing.assert_allclose(references.features[j, v], by_hand(aug.reference(tile)), rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(queries.features[i, v], by_hand(aug.query(pano)), rtol=1e-3, atol=1e-3)
    assert not np.allclose(references.features[j, 1], references.features[j, 0], atol=1e-2)  # views differ

    # Reused, not rebuilt: a second call runs nothing; another identity is refused.
    again = {}
    queries2, _ = _extract(split, backbone, tmp_path / "c", stats=again)
    assert again["images"] == 0 and np.array_equal(queries2.features, queries.features)
    with pytest.raises(DataError, match="weights"):
        extract_crossview(
            split,
            lambda: backbone,
            tmp_path / "c",
            views=3,
            query_size=QUERY,
            reference_size=REFERENCE,
            seed=4,
            batch_size=3,
            device="cpu",
            identity={**IDENTITY, "weights": "other"},
            shard_size=4,
        )


def test_interrupted_extraction_resumes_to_the_same_bytes(setup, tmp_path):
    split, backbone = setup
    whole = _extract(split, backbone, tmp_path / "whole", views=2)

    def stop(role, shard):
        if role == "references" and shard == 1:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        _extract(split, backbone, tmp_path / "cut", views=2, on_shard=stop)
    assert (tmp_path / "cut" / "queries" / "manifest.json").is_file()
    assert sorted(p.name for p in (tmp_path / "cut" / "references.partial").glob("shard_*.npy")) == [
        "shard_000000.npy",
        "shard_000001.npy",
    ]
    stats = {}
    resumed = _extract(split, backbone, tmp_path / "cut", views=2, stats=stats)
    assert stats["images"] == len(split) - 8  # only the last references shard
    assert not (tmp_path / "cut" / "references.partial").exists()
    for a, b in zip(whole, resumed, strict=True):
        assert np.array_equal(a.features, b.features)


def test_bad_arguments():
    with pytest.raises(ValueError, match="square"):
        extract_crossview(
            None,
            None,
            "unused",
            views=2,
            query_size=(32, 64),
            reference_size=(32, 48),
            seed=0,
            batch_size=1,
            device="cpu",
            identity={},
        )
