"""Smoke test of the benchmarks: each runs at tiny sizes and both of its sides must agree.

No timing is asserted (the figures of a tiny run mean nothing); what is checked is that every
benchmark runs end to end and that the two ways it compares computed the same result. One
thread: on a busy machine, two threads on tiny tensors spend their time waiting for each other.

The sweep and packing benchmarks run their studies with ``tune_main.py`` (real Ray, real Tune and
Optuna, real trial workers). Here their four studies join one local Ray instance started for this
module (``--address``, given as ``RAY_ADDRESS``) instead of each starting and stopping its own,
which costs about 15-20 s a study on 2 busy cores. The launcher's own start of Ray is covered by
tests/test_tuning.py.
"""

import os

import pytest
import torch

pytest.importorskip("geoclip")

from bench import (  # noqa: E402
    bench_eval,
    bench_location_encoder,
    bench_memory,
    bench_packing,
    bench_pareto,
    bench_sweep,
    bench_train_step,
)
from bench.__main__ import main as bench_main  # noqa: E402


@pytest.fixture(scope="module")
def ray_address():
    """The address of a local Ray instance that lives as long as this module's tests.

    Started with one torch thread per trial, as the tests' own environment gives them
    (``one_thread``): trial workers take the environment of the instance, not of the launcher
    that joins it. Importing ray and ``ray.init`` set variables in this process's environment
    (``RAY_AUTH_MODE``, which the launchers that join need, and others); they are all undone at the
    end, so that no later test's Ray sees them.
    """
    saved = dict(os.environ)  # before the import: importing ray sets RAY_CLIENT_MODE
    ray = pytest.importorskip("ray")
    os.environ.pop("RAY_ADDRESS", None)
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        ray.init(
            address="local", include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="ERROR"
        )
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        os.environ.update(saved)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # read by Trainer (cpu_share) and the memory children
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_eval_agrees_with_published():
    result = bench_eval.run(n_val=100, gallery_size=500, parts=1, val_negatives=32)
    assert result.agreed, result.body
    assert result.figures["pred_differ"] == 0
    assert "| 2500 km |" in result.body


def test_location_encoder_agrees_and_bf16_runs(tmp_path):
    tiny = {
        "data": {
            "offline": {
                "n_train": 300,
                "n_val": 50,
                "n_gallery": 300,
                "feature_dim": 32,
                "views": 1,
                "root": str(tmp_path),
            }
        },
        "model": {"hidden_dim": 32, "depth": 1, "rff_features": 16, "embed_dim": 16, "image_hidden_dim": 32},
        "train": {"batch_size": 100, "queue_size": 100},
    }
    result = bench_location_encoder.run(n_coords=64, repeats=1, threads=(1,), seeds=2, epochs=1, train_overrides=tiny)
    assert result.agreed, result.body
    assert result.figures["out_dev"] <= 1e-5
    # bf16 with the Fourier features in fp32 stays close to fp32; with them in bf16 it is far off
    assert result.figures["bf16_dev"] < 0.01 < result.figures["bf16_old_dev"]
    assert set(result.figures["within_noise"]) == set(bench_location_encoder.PRECISIONS) - {"fp32"}


def test_train_step_whole_equals_parts():
    result = bench_train_step.run({"tiny": (1, 1)})
    assert result.agreed, result.body
    assert result.figures["tiny"]["loss_dev"] <= 1e-4


def test_memory_children_run():
    # a child per core at once: each measures its own process, and spends most of its time importing torch
    cores = len(os.sched_getaffinity(0))
    result = bench_memory.run(small=300, large=3000, n_val=50, steps=5, repeats=1, parallel=cores)
    assert result.agreed, result.body
    for r in result.figures["results"].values():
        assert r["peak_rss_mb"] >= r["peak_anon_mb"] > 0


@pytest.mark.slow
def test_sweep_grid_and_tpe_asha_agree_on_shared_cells(ray_address, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", ray_address)
    result = bench_sweep.main(quick=True)  # 4-cell grid and 4 TPE + ASHA trials through tune_main.py
    assert result.agreed, result.body
    assert result.figures["grid"]["trials"] == 4 and result.figures["tpe"][0]["trials"] == 4
    assert result.figures["shared_cells"] >= 1, result.body  # the agreement compared at least one cell


@pytest.mark.slow
def test_packing_runs_every_level_with_the_same_seed0_score(ray_address, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", ray_address)
    result = bench_packing.main(quick=True)
    assert result.agreed, result.body
    levels = result.figures["levels"]
    assert [r["trials"] for r in levels] == [r["level"] for r in levels] and len(levels) >= 2


@pytest.mark.slow
def test_pareto_search_runs_three_ways_with_the_same_final_accuracies(ray_address, monkeypatch):
    from ray.tune.schedulers.async_hyperband import _Bracket  # Ray's own ASHA cut, as test_pareto.py uses it

    from geoloc.tuning.pareto import promoted

    monkeypatch.setenv("RAY_ADDRESS", ray_address)
    result = bench_pareto.main(quick=True)  # MOASHA, random with its epochs, ASHA: 3 studies through tune_main.py
    assert result.agreed, result.body
    moasha, random, asha = (result.figures[method][0] for method in bench_pareto.METHODS)
    n, epochs = bench_pareto.QUICK_TRIALS, bench_pareto.QUICK_EPOCHS
    # One trial at a time (bench_pareto.QUICK_SLOTS): trial k reaches the rung at epoch 1 after trial k - 1
    # ended, so what each scheduler decided there follows from the epoch-1 values in number order. Replayed
    # here: MOASHA's rule (geoloc.tuning.pareto.promoted, checked by hand in test_pareto.py) on (acc_1km,
    # acc_2500km), Ray's ASHA cut on the score. A kept trial runs every epoch, a stopped one 1.
    assert [a["number"] for a in moasha["arrivals"]] == [a["number"] for a in asha["arrivals"]] == list(range(n))
    vectors = [(a["acc_1km"], a["acc_2500km"]) for a in moasha["arrivals"]]
    kept = [bool(promoted(vectors[: k + 1], [True, True], 2)[-1]) for k in range(n)]
    assert [a["epochs"] for a in moasha["arrivals"]] == [epochs if keep else 1 for keep in kept]
    scores, cut = [a["score"] for a in asha["arrivals"]], _Bracket(min_t=1, max_t=epochs, reduction_factor=2, s=0)
    kept = [k == 0 or scores[k] >= cut.cutoff(dict(enumerate(scores[:k]))) for k in range(n)]
    assert [a["epochs"] for a in asha["arrivals"]] == [epochs if keep else 1 for keep in kept]
    for r in (moasha, asha):
        assert r["trials"] == n and r["epochs"] == sum(a["epochs"] for a in r["arrivals"])
        assert r["full_trials"] == sum(a["epochs"] == epochs for a in r["arrivals"])
    # Random search gets as many full-length trials as fit in MOASHA's epochs, and none is stopped.
    assert random["trials"] == random["full_trials"] == moasha["epochs"] // epochs
    assert [a["epochs"] for a in random["arrivals"]] == [epochs] * random["trials"]
    assert random["epochs"] == random["trials"] * epochs
    # Trial k has the same hyperparameters and seed in all three studies: the same epoch-1 values.
    for k in range(random["trials"]):
        assert (
            random["arrivals"][k] | {"epochs": 0}
            == moasha["arrivals"][k] | {"epochs": 0}
            == (asha["arrivals"][k] | {"epochs": 0})
        )
    assert 1 <= moasha["front"] <= moasha["full_trials"] and 0 <= moasha["hypervolume"] <= 1


@pytest.mark.parametrize("level", bench_packing.GPU_LEVELS)
def test_gpu_packing_studies_are_valid(level, tmp_path):
    """The GPU side cannot run on a machine without one; its study files must still validate."""
    import yaml

    from geoloc.study.studyfile import load_study_file

    path = tmp_path / "packing.yaml"
    path.write_text(yaml.safe_dump(bench_packing.study_spec(level, gpu=True, quick=False)))
    study = load_study_file(path)
    assert study.resources.gpu == 1 / level and study.search.max_concurrent == level
    assert study.base.train.device == "cuda" and study.base.model.hidden_dim == 1024


def test_gpu_sampler_reads_power_draw_and_memory_not_utilization(tmp_path, monkeypatch):
    """Parsing only: a stand-in ``nvidia-smi`` records what it was asked and prints three samples in
    that format, one without a power reading. ``utilization.gpu`` (the share of time any kernel ran)
    is not asked for: the power draw (mean) and the memory (peak) are reported instead."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        f"#!/bin/sh\necho \"$@\" > {tmp_path / 'args'}\necho '250.5, 1000'\necho '[N/A], 2000'\necho '349.5, 3000'\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    sampler = bench_packing.GpuSampler()
    sampler.start()
    sampler.join(timeout=10)
    assert sampler.stop() == {"gpu_power_w": 300.0, "gpu_mem_mib": 3000.0}
    asked = (tmp_path / "args").read_text()
    assert "--query-gpu=power.draw,memory.used " in asked and "utilization" not in asked, asked


def test_gpu_sampler_without_samples_reports_nan(tmp_path, monkeypatch):
    import math

    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho '[N/A], [N/A]'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    sampler = bench_packing.GpuSampler()
    sampler.start()
    sampler.join(timeout=10)
    assert all(math.isnan(v) for v in sampler.stop().values())


def test_gpu_packing_report_shows_throughput_and_power_draw(monkeypatch):
    """The GPU table (rendered from stand-in measurements): power draw beside the throughput, no utilization."""

    def fake_measure(level, gpu, quick, storage):
        return {
            "level": level,
            "trials": level,
            "epochs": level * bench_packing.EPOCHS,
            "wall_s": 100.0,
            "end_to_end_per_hour": 100.0 * level,
            "epoch_s": 10.0,
            "steady_per_hour": 360.0 * level,
            "seed0_score": 0.5,
            "gpu_power_w": 150.0 + 100 * level,
            "gpu_mem_mib": 2000.0 * level,
        }

    monkeypatch.setattr(bench_packing, "measure", fake_measure)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Stand-in GPU")
    result = bench_packing.run()
    assert result.agreed, result.body
    assert "| GPU power draw (W, mean) | GPU memory MiB (peak) |" in result.body
    assert "| 4 | 100 | 400 | 4.00 | 10.0 | 1440 | **4.00** | 550 | 8000 | 0.5000 |" in result.body
    assert "GPU util" not in result.body and "`utilization.gpu` is not shown" in result.body


def test_report_is_written(tmp_path):
    out = tmp_path / "RESULTS.md"
    assert bench_main(["--quick", "--only", "bench_train_step", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Benchmarks") and "torch" in text and "Both sides agreed: yes" in text
