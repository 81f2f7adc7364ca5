"""Parity with the published implementation: the installed ``geoclip`` package."""

import numpy as np
import pytest
import torch

from geoloc.geo import haversine_km
from geoloc.tasks.geoclip.config import EvalConfig, ModelConfig
from geoloc.tasks.geoclip.evaluate import accuracy_metrics
from geoloc.tasks.geoclip.model import GeoCLIP, LocationEncoder

geoclip = pytest.importorskip("geoclip")

EDGE_COORDS = [[90.0, 0.0], [-90.0, 0.0], [89.99, 179.99], [0.0, 180.0], [0.0, -180.0], [-33.9, 151.2], [51.5, -0.13]]


def test_location_encoder_matches_published_embeddings():
    ours = LocationEncoder.from_geoclip().eval()
    published = geoclip.LocationEncoder(from_pretrained=True).eval()
    coords = torch.cat(
        [
            torch.tensor(EDGE_COORDS),
            torch.from_numpy(np.random.default_rng(0).uniform([-90, -180], [90, 180], (500, 2))).float(),
        ]
    )
    with torch.no_grad():
        a, b = ours(coords), published(coords)
    err = (a - b).abs().max().item()
    assert err <= 1e-5, err
    assert a.abs().max() > 0.05  # not trivially zero
    print(f"max abs embedding error vs published: {err:.2e}")


def _published_model_on_features(queue_size):
    """Published GeoCLIP with its frozen CLIP replaced by the identity on cached features.

    Our trainer never runs the backbone (features are cached), so the comparison is of
    everything after it: image MLP, location encoder, logit scale, queue and loss.
    """
    model = geoclip.GeoCLIP(from_pretrained=True, queue_size=queue_size, clip_pretrained=False)

    class Features(torch.nn.Module):
        def get_image_features(self, pixel_values):
            return pixel_values

    model.image_encoder.CLIP = Features()
    return model


def test_one_training_step_gives_the_published_loss():
    from geoloc.parts.graphs import GraphedModules
    from geoloc.parts.negatives import NegativeDistances
    from geoloc.tasks.geoclip.config import GeoCLIPConfig, TrainConfig
    from geoloc.tasks.geoclip.trainer import Trainer

    batch, queue_size = 16, 32
    rng = np.random.default_rng(0)
    feats = torch.from_numpy(rng.normal(size=(batch, 768))).float()
    gps = torch.from_numpy(rng.uniform([-60, -180], [70, 180], (batch, 2))).float()
    queue = torch.from_numpy(rng.uniform([-60, -180], [70, 180], (queue_size, 2))).float()

    published = _published_model_on_features(queue_size)
    published.gps_queue.copy_(queue.T)
    published_opt = torch.optim.Adam(published.parameters(), lr=3e-5, weight_decay=1e-6)
    captured = []

    class Capture(torch.nn.CrossEntropyLoss):
        def forward(self, logits, target):
            loss = super().forward(logits, target)
            captured.append(loss.item())
            return loss

    geoclip.train(
        [(feats, gps)], published, published_opt, epoch=1, batch_size=batch, device="cpu", criterion=Capture()
    )

    ours = GeoCLIP(ModelConfig(), feature_dim=768, queue_size=queue_size)
    ours.load_geoclip_weights()
    ours.queue.push(queue)
    trainer = Trainer.__new__(Trainer)  # the step alone, without data loading
    trainer.cfg = GeoCLIPConfig(train=TrainConfig(queue_size=queue_size))
    trainer.model, trainer.device, trainer.generator = ours, torch.device("cpu"), torch.Generator()
    trainer.graphs = GraphedModules({}, enabled=False)
    trainer.miner, trainer.distances = None, NegativeDistances()  # nothing mined: the published step
    trainer.epoch, trainer.mask_km = 0, 0.0  # its first epoch, nothing masked
    trainer.optimizer = torch.optim.Adam(ours.parameters(), lr=3e-5, weight_decay=1e-6)
    our_loss = float(trainer.train_step(feats, gps))

    assert our_loss == pytest.approx(captured[0], abs=1e-5)
    # and the step moved the weights the same way
    a = ours.image_head[0].weight
    b = published.image_encoder.mlp[0].weight
    # The same gradient, to float32 rounding of the largest one; and the same step wherever the gradient
    # stands above that rounding: Adam divides each gradient by its own magnitude, so where it is
    # rounding noise (|g| ~ 1e-7) the step's size is too, and two correct implementations differ there.
    ga, gb = a.grad, b.grad
    rounding = 1e-6 * gb.abs().max().item()
    assert (ga - gb).abs().max().item() < rounding
    resolved = gb.abs() > 100 * rounding
    assert resolved.float().mean() > 0.9  # most of the layer: the check below is not vacuous
    assert (a - b)[resolved].abs().max().item() < 1e-6


def test_accuracies_equal_the_published_geodesic_evaluation():
    from geoclip.train.eval import distance_accuracy

    rng = np.random.default_rng(1)
    gallery = rng.uniform([-60, -180], [70, 180], (2000, 2))
    targets = gallery[rng.integers(0, len(gallery), 600)] + rng.normal(scale=[0.5, 0.5], size=(600, 2)) * rng.choice(
        [0.001, 0.1, 3, 20], size=(600, 1)
    )
    targets = np.clip(targets, [-90, -180], [90, 180])
    preds = rng.integers(0, len(gallery), 600)
    preds[:300] = np.argmin(haversine_km(targets[:300, None], gallery[None]), axis=1)  # many near hits

    cfg = EvalConfig()
    ours = accuracy_metrics(haversine_km(gallery[preds], targets), cfg)
    from geopy.distance import geodesic

    geodesic_km = np.array([geodesic(gallery[p], t).km for p, t in zip(preds, targets, strict=True)])
    great_circle_km = haversine_km(gallery[preds], targets)
    # A sphere of mean radius differs from the WGS84 geodesic by at most ~0.56%.
    band = 0.006
    assert np.all(np.abs(great_circle_km - geodesic_km) <= band * geodesic_km + 1e-9)
    for t in cfg.thresholds_km:
        published_acc, _ = distance_accuracy(targets, preds, t, gallery)
        in_band = np.abs(geodesic_km - t) <= band * t  # where the two distances may disagree
        disagree = np.sum((great_circle_km <= t) != (geodesic_km <= t))
        assert disagree <= in_band.sum()
        assert round(abs(ours[f"acc_{t:g}km"] - published_acc) * len(preds)) == disagree
        print(f"{t:g} km: {disagree} of {len(preds)} samples disagree, {in_band.sum()} lie in the band")
