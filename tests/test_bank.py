"""Mined negatives as a memory bank (``train.negatives.bank``, ``geoloc.parts.negatives.MinedBank``): with
``bank: false`` a step is the old one bit for bit; with ``bank: true`` the mined embeddings are the encoder's
output at the last refresh, carry no gradient, are refreshed exactly every N steps and at each epoch's start,
and a resumed trial continues exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from geoloc.parts.losses import training_loss
from geoloc.run.loop import train
from geoloc.tasks.geoclip.trainer import Trainer

from .conftest import build


def bank_config(small_config, bank: bool, refresh: int = 3) -> dict:
    small_config["data"]["offline"].update(n_train=1000, n_val=100, n_gallery=1000)
    small_config["train"].update(
        epochs=1,
        batch_size=64,
        queue_size=64,
        negatives={"mined": 4, "near_k": 8, "min_km": 1.0, "bank": bank, "bank_refresh_steps": refresh},
    )
    return small_config


def old_step(trainer: Trainer, features, gps, idx) -> None:
    """The step before the bank existed (mined points encoded with the batch, GPS noise on the batch and queue)."""
    from geoloc.geo import gps_noise

    model, noise = trainer.model, trainer.cfg.train.noise
    queue = model.queue.contents()
    mined = trainer.miner.coords(trainer.miner.draw(idx, trainer.generator), trainer.device)
    trainer.distances.add(gps, torch.cat([gps, queue]), mined)
    locations = torch.cat(
        [gps_noise(gps, noise.batch_sigma, trainer.generator), gps_noise(queue, noise.queue_sigma, trainer.generator)]
    )
    n_shared = len(locations)
    location_emb = model.encode_locations(torch.cat([locations, mined.flatten(0, 1)]))
    loss = training_loss(
        trainer.cfg.train.loss,
        model.encode_images(features),
        location_emb[:n_shared],
        model.logit_scale,
        location_emb[n_shared:].unflatten(0, mined.shape[:2]),
    )
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    trainer.optimizer.step()
    model.clamp_logit_scale()
    model.queue.push(gps)


def steps(trainer: Trainer, n: int):
    for i, (idx, views) in enumerate(trainer.batches()):
        if i == n:
            return
        yield idx, torch.from_numpy(trainer.data.train.read(idx, views)).float(), trainer.train_coords[idx]


def test_without_the_bank_a_step_is_the_old_one_bit_for_bit(small_config):
    ours, reference = (Trainer(build(bank_config(copy.deepcopy(small_config), bank=False))) for _ in range(2))
    assert ours.bank is None
    for (idx, features, gps), (ridx, rfeatures, rgps) in zip(steps(ours, 4), steps(reference, 4), strict=True):
        ours.train_step(features, gps, idx)
        old_step(reference, rfeatures, rgps, ridx)
    for (name, a), (_, b) in zip(ours.model.state_dict().items(), reference.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_bank_holds_the_encoders_output_at_the_last_refresh_without_gradient(small_config):
    trainer = Trainer(build(bank_config(small_config, bank=True, refresh=3)))
    bank, encoder = trainer.bank, trainer.model.location_encoder
    snapshots = {}  # step -> the encoder's weights when the bank was refreshed
    refresh = bank.refresh

    buffers = set()  # the bank's storage after each refresh: one buffer, filled in place

    def recording(encode):
        snapshots[bank.step] = copy.deepcopy(encoder.state_dict())
        refresh(encode)
        buffers.add(bank.embeddings.data_ptr())

    bank.refresh = recording
    looked_up = []
    lookup = bank.lookup

    def recording_lookup(mined, encode):
        out = lookup(mined, encode)
        looked_up.append((mined.clone(), out))
        return out

    bank.lookup = recording_lookup
    trainer.bank.start_epoch()
    for idx, features, gps in steps(trainer, 7):
        trainer.train_step(features, gps, idx)
    assert bank.refreshed_at == [0, 3, 6] and sorted(snapshots) == [0, 3, 6] and len(buffers) == 1
    # Known answer: the encoder with the weights of step 6, run on every pool point.
    probe = copy.deepcopy(trainer.model)
    probe.location_encoder.load_state_dict(snapshots[6])
    with torch.no_grad():
        expected = probe.encode_locations(trainer.miner.pool_t)
    torch.testing.assert_close(bank.embeddings, expected, rtol=0, atol=1e-6)
    mined, out = looked_up[-1]
    assert torch.equal(out, bank.embeddings[mined])
    assert not out.requires_grad and out.grad_fn is None
    assert not torch.equal(bank.embeddings, trainer.model.encode_locations(trainer.miner.pool_t).detach())  # stale


@pytest.mark.slow
def test_a_resumed_trial_with_the_bank_continues_exactly(small_config, tmp_path):
    cfg = bank_config(small_config, bank=True, refresh=5)
    cfg["train"]["epochs"] = 2
    straight = train(build(cfg), tmp_path / "straight")
    cfg["train"]["epochs"] = 1
    train(build(cfg), tmp_path / "split")
    cfg["train"]["epochs"] = 2
    resumed = train(build(cfg), tmp_path / "split", resume=True)
    assert resumed == {**straight, "train_s": resumed["train_s"], "eval_s": resumed["eval_s"]}
