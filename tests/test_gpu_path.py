"""The GPU path's defects, each checked where it can be on the CPU: resume of a checkpoint written on
another device, TF32 kept to its trial and away from the Fourier features, the evaluation's
similarities in fp32 under bf16, the two feeds giving the same batches, device and resources
checked up front."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.overrides import TorchFunctionMode

from geoloc.common.validation import ConfigError
from geoloc.parts.feed import Feed
from geoloc.parts.precision import exact_fp32, precision
from geoloc.run.loop import train
from geoloc.study.studyfile import StudyConfig, load_study_file
from geoloc.tasks.geoclip.model import GaussianFourierFeatures
from geoloc.tasks.geoclip.trainer import Trainer

from .conftest import build


class MatmulFlags(TorchFunctionMode):
    """Records, for each matrix product, the shape of its second operand and whether TF32 was on."""

    PRODUCTS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, F.linear}

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[tuple, bool, torch.dtype]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self.PRODUCTS:
            self.calls.append((tuple(args[1].shape), torch.backends.cuda.matmul.allow_tf32, out.dtype))
        return out


@pytest.fixture
def tf32_left_on():
    """A process in which an earlier trial left TF32 on (what ``reuse_actors`` gave before)."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def steps(trainer: Trainer, n: int) -> None:
    for _, (features, gps) in zip(range(n), trainer.feed.epoch(trainer.batches()), strict=False):
        trainer.train_step(features, gps)


def test_a_tf32_trial_leaves_the_flag_as_it_found_it(small_config):
    small_config["train"]["precision"] = "tf32"
    before = torch.backends.cuda.matmul.allow_tf32
    trainer = Trainer(build(small_config))
    assert torch.backends.cuda.matmul.allow_tf32 == before  # constructing a trainer sets nothing
    with MatmulFlags() as seen:
        steps(trainer, 2)
    assert torch.backends.cuda.matmul.allow_tf32 == before
    fourier = [tf32 for shape, tf32, _ in seen.calls if shape[0] == 2]
    # float32 products: TF32 means nothing to the float64 one of the sampler's diagnostics (exact_fp32 too)
    others = [tf32 for shape, tf32, dtype in seen.calls if shape[0] != 2 and dtype == torch.float32]
    assert fourier and not any(fourier)  # the Fourier features' phases: exact fp32
    assert others and all(others)  # every other product of the step: TF32


def test_fp32_steps_run_without_tf32_whatever_an_earlier_trial_left(small_config, tf32_left_on):
    trainer = Trainer(build(small_config))
    with MatmulFlags() as seen:
        steps(trainer, 1)
        trainer.evaluate()
    assert seen.calls and not any(tf32 for _, tf32, _ in seen.calls)
    assert torch.backends.cuda.matmul.allow_tf32  # and the process's own setting is back afterwards


def test_fourier_features_are_exact_fp32_under_tf32_and_bf16():
    for name in ("tf32", "bf16"):
        features = GaussianFourierFeatures(sigma=256.0, n_features=8)
        v = torch.randn(5, 2)
        with MatmulFlags() as seen, precision(name, torch.device("cpu")):
            out = features(v)
        (shape, tf32, dtype) = seen.calls[0]
        assert shape == (2, 8) and not tf32 and dtype == torch.float32, (name, seen.calls)
        with exact_fp32(torch.device("cpu")):
            expected = features(v)
        assert torch.equal(out, expected)


def test_evaluation_similarities_are_fp32_under_bf16(small_config):
    """The top-1 search sees the fp32 products of the (bf16-computed) embeddings: the picks equal the
    fp32 argmax exactly, where bf16 products would round similarities to ~0.003 and pick otherwise."""
    small_config["train"]["precision"] = "bf16"
    small_config["eval"] = {"gallery_chunk": 1000}
    trainer = Trainer(build(small_config))
    steps(trainer, 5)
    evaluator = trainer.evaluators["val"]
    result = evaluator(trainer.model, trainer.precision)
    trainer.model.eval()
    images, _ = evaluator.embed(trainer.model, trainer.precision)
    image_emb = torch.cat(images)
    gallery_emb = torch.cat([emb for _, emb in trainer.gallery.embeddings(trainer.model, trainer.precision)])
    assert image_emb.dtype == gallery_emb.dtype == torch.float32
    assert np.array_equal(result.predicted, (image_emb @ gallery_emb.T).argmax(dim=1).numpy())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = (image_emb @ gallery_emb.T).argmax(dim=1).numpy()
    assert (rounded != result.predicted).any()  # the case is one where bf16 products pick otherwise


def test_resume_of_a_checkpoint_written_on_a_gpu(small_config, tmp_path):
    """A checkpoint whose storages are tagged cuda:0, holding a GPU's second generator and its Adam options
    (fused, capturable: the graph step's), resumes on the CPU exactly: loaded on the CPU first, the generator
    state stays there, and the CPU keeps its own Adam."""
    small_config["train"]["epochs"] = 2
    straight = train(build(small_config), tmp_path / "straight")

    small_config["train"]["epochs"] = 1
    trainer = Trainer(build(small_config))
    trainer.run_epoch()
    state = trainer.state_dict() | {"device_generator": torch.Generator().manual_seed(9).get_state()}
    state["optimizer"]["param_groups"][0] |= {"fused": True, "capturable": True}
    path = tmp_path / "from_gpu" / "checkpoint.pt"
    path.parent.mkdir()
    with tagged_as("cuda:0"):
        torch.save(state, path)
    with pytest.raises(RuntimeError, match="CUDA"):  # the file really says cuda
        torch.load(path, weights_only=True)

    small_config["train"]["epochs"] = 2
    resumed = train(build(small_config), path.parent, resume=True)
    assert resumed == {**straight, "train_s": resumed["train_s"], "eval_s": resumed["eval_s"]}


class tagged_as:
    """While active, ``torch.save`` records every CPU storage as living on ``location``."""

    def __init__(self, location: str):
        self.location = location

    def __enter__(self):
        import torch.serialization as ser

        self.entry = (0, lambda storage: self.location if storage.device.type == "cpu" else None, lambda s, loc: None)
        ser._package_registry.insert(0, self.entry)

    def __exit__(self, *exc):
        import torch.serialization as ser

        ser._package_registry.remove(self.entry)


def test_queue_position_survives_a_checkpoint(small_config):
    trainer = Trainer(build(small_config))
    steps(trainer, 3)
    other = Trainer(build(small_config))
    other.load_state_dict(trainer.state_dict())
    assert torch.equal(other.model.queue.contents(), trainer.model.queue.contents())
    assert len(other.model.queue.contents()) == min(3 * 128, 256)


def test_resident_and_streamed_feeds_give_the_same_batches_and_draws(small_config):
    trainer = Trainer(build(small_config))
    cache = trainer.data.train
    streamed, resident = Feed(cache, trainer.device), Feed(cache, trainer.device, resident=True)
    assert not streamed.resident and resident.resident
    generators = []
    epochs = []
    for feed in (streamed, resident):
        trainer.generator.manual_seed(5)
        epochs.append(list(feed.epoch(trainer.batches())))
        generators.append(trainer.generator.get_state())
    assert torch.equal(*generators)  # the reader draws nothing of its own
    (a, b) = epochs
    assert len(a) == len(b) == -(-len(cache) // 128)
    for (fa, ga), (fb, gb) in zip(a, b, strict=True):
        assert fa.dtype == torch.float32 and torch.equal(fa, fb) and torch.equal(ga, gb)
    # and they are the rows the cache holds, in the trainer's order
    trainer.generator.manual_seed(5)
    idx, views = next(trainer.batches())
    assert torch.equal(a[0][0], torch.from_numpy(cache.read(idx, views).astype(np.float32)))
    assert torch.equal(a[0][1], torch.from_numpy(cache.coords[idx]).float())


def test_streamed_feed_stops_its_reader_when_the_epoch_is_abandoned(small_config):
    import threading

    trainer = Trainer(build(small_config))
    epoch = trainer.feed.epoch(trainer.batches())
    next(epoch)
    epoch.close()  # what a DivergenceError mid-epoch does to the generator
    assert not [t for t in threading.enumerate() if t.name.startswith("feed")]


@pytest.mark.parametrize(
    "device,gpu,message",
    [
        ("cuda", 0, "resources.gpu: 0, but train.device can be cuda"),
        ("cpu", 0.25, "resources.gpu: 0.25, but train.device is cpu"),
    ],
)
def test_device_and_gpu_request_must_agree(device, gpu, message, tmp_path):
    def load(study: dict) -> StudyConfig:
        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump(study))
        return load_study_file(path)

    study = {"name": "s", "base": {"train": {"device": device}}, "resources": {"cpu": 1, "gpu": gpu}}
    with pytest.raises(ConfigError, match=message):
        load(study)
    searched = {**study, "base": {}, "search_space": {"train.device": {"type": "choice", "values": ["auto", device]}}}
    if device == "cuda":  # a search over devices that may pick cuda is refused too
        with pytest.raises(ConfigError, match=message):
            load(searched)
    else:  # auto may take the card it reserves
        assert load(searched).resources.gpu == gpu


def test_graph_step_on_the_cpu_is_the_default_step(small_config):
    """``train.graph_step`` captures only on a GPU: on the CPU the optimiser and the steps stay the default's."""
    runs = {}
    for graph_step in (False, True):
        small_config["train"]["graph_step"] = graph_step
        trainer = Trainer(build(small_config))
        batches = zip(range(3), trainer.feed.epoch(trainer.batches()), strict=False)
        losses = [trainer.train_step(f, g) for _, (f, g) in batches]
        runs[graph_step] = (torch.stack(losses), trainer.model.state_dict(), trainer.optimizer.defaults["capturable"])
    assert torch.equal(runs[True][0], runs[False][0]) and runs[True][2] is runs[False][2] is False
    assert all(torch.equal(v, runs[False][1][k]) for k, v in runs[True][1].items())


def test_a_learning_rate_on_the_device_is_saved_as_a_float_and_filled_in_place_on_load(small_config):
    """The graph step's Adam reads its learning rate from a tensor (here on the CPU): a checkpoint holds floats,
    loads into a trainer with a float rate, and into one with a tensor, which keeps its own tensor."""

    def with_rate_tensor(trainer: Trainer) -> Trainer:
        trainer.optimizer.param_groups[0]["lr"] = torch.tensor(trainer.cfg.train.lr)
        return trainer

    first = with_rate_tensor(Trainer(build(small_config)))
    steps(first, 2)
    first.scheduler.step()  # fills the tensor in place
    assert float(first.optimizer.param_groups[0]["lr"]) == pytest.approx(first.cfg.train.lr * first.cfg.train.lr_gamma)
    state = first.state_dict()
    assert type(state["optimizer"]["param_groups"][0]["lr"]) is float
    assert all(type(v) is float for v in state["scheduler"]["_last_lr"] + state["scheduler"]["base_lrs"])
    plain, tensor = Trainer(build(small_config)), with_rate_tensor(Trainer(build(small_config)))
    own = tensor.optimizer.param_groups[0]["lr"]
    for trainer in (plain, tensor):
        trainer.load_state_dict(state)
    assert type(plain.optimizer.param_groups[0]["lr"]) is float
    assert tensor.optimizer.param_groups[0]["lr"] is own and float(own) == plain.optimizer.param_groups[0]["lr"]


def test_queue_writes_at_its_device_position_and_the_host_follows():
    from geoloc.tasks.geoclip.model import GPSQueue

    queue = GPSQueue(5)
    for start in (0, 3):
        queue.write(torch.arange(start, start + 3, dtype=torch.float32)[:, None].expand(3, 2))
        queue.advance(3)
    assert queue.coords[:, 0].tolist() == [5.0, 1.0, 2.0, 3.0, 4.0]  # 0 was overwritten by 5
    assert int(queue.ptr) == queue._ptr == 1 and int(queue.count) == queue._count == 5
