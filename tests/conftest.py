"""Shared fixtures: a small offline benchmark built once per test session; which tests run one at a time."""

from __future__ import annotations

import pytest

from geoloc.study.config import parse_job
from geoloc.tasks.geoclip.config import GeoCLIPConfig

# Small enough for a few seconds per epoch on 2 cores, big enough that learning shows. One torch thread:
# two threads wait on each other for seconds while the tests that start Ray hold the cores, and these
# tests compare runs, not speeds.
SMALL = {
    "data": {"offline": {"n_train": 3000, "n_val": 300, "n_gallery": 3000, "feature_dim": 256, "views": 2}},
    "model": {"hidden_dim": 128, "depth": 2, "embed_dim": 64, "image_hidden_dim": 128},
    "train": {"epochs": 4, "batch_size": 128, "queue_size": 256, "lr": 1e-3, "seed": 0, "threads": 1},
}


# `make test` runs two pytest workers (pytest-xdist, --dist loadgroup). The tests that start Ray of their own
# (local instances, two-node clusters, SLURM allocations), kill drivers or workers, or check that no Ray
# process is left, run one after another within their group: two groups, balanced by their measured time,
# so that each worker runs one of them; every other test trains or analyses in its own folders and goes to
# whichever worker is free, in the time the Ray tests spend waiting. They are the tests of these files,
# except dry runs, the tests without a Ray fixture in two files, and those on the shared instance.
ONE_AT_A_TIME = {  # file -> its group; the two groups run side by side, one on each worker
    "test_reliability.py": "ray",
    "test_recovery.py": "ray",
    "test_status.py": "ray",
    "test_slurm.py": "ray",
    "test_bench_smoke.py": "ray2",
    "test_cluster.py": "ray2",
    "test_tuning.py": "ray2",
    "test_pareto.py": "ray2",
    "test_bad_input.py": "ray2",
    "test_figures_unchanged.py": "ray2",
}


RAY_FIXTURES = {"test_bench_smoke.py": {"ray_address"}, "test_pareto.py": {"local_ray"}}
NO_RAY_TESTS = {"test_dry_run_of_every_shipped_study"}


def starts_ray(item: pytest.Item) -> bool:
    name = item.path.name
    if "shared_ray" in getattr(item, "fixturenames", ()):
        return False  # a launcher on the worker's own shared instance: kills nothing, safe beside the others
    if name not in ONE_AT_A_TIME or getattr(item, "originalname", item.name) in NO_RAY_TESTS:
        return False
    return name not in RAY_FIXTURES or bool(RAY_FIXTURES[name] & set(getattr(item, "fixturenames", ())))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if starts_ray(item):
            item.add_marker(pytest.mark.xdist_group(ONE_AT_A_TIME[item.path.name]))


@pytest.fixture(scope="session")
def shared_ray():
    """One Ray instance (``studyutil.RayHead``) for the tests that run a study in a launcher process without
    killing Ray or the launcher: they pass ``--address shared_ray.address`` and ``env=shared_ray.env``.
    Tests that kill drivers or workers, check the launcher's own start of Ray, or start Ray in the test's
    process start their own (this process's environment is left as it is). It lives on the worker that
    runs the test: each pytest worker that runs such a test starts one."""
    from .studyutil import RayHead

    head = RayHead()
    yield head
    head.stop()


@pytest.fixture(scope="session")
def offline_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("offline"))


@pytest.fixture
def small_config(offline_root) -> dict:
    """The small run as plain data (tests change it before building a GeoCLIPConfig)."""
    import copy

    cfg = copy.deepcopy(SMALL)
    cfg["data"]["offline"]["root"] = offline_root
    return cfg


def build(data: dict) -> GeoCLIPConfig:
    return parse_job(data)


@pytest.fixture(scope="session")
def offline_root_session(offline_root):
    return offline_root
