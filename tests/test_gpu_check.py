"""``python -m bench.gpu_check``, the GPU readiness script, tested where there is no GPU.

Without a GPU it must say so and exit 0 at once, writing no table; ``--device cpu --quick`` runs
every check at tiny sizes, the whole script's code before the few minutes of a real GPU; neither
the script nor the project modules it imports may pull in Ray, Optuna or moocore (the GPU node
has none of them); what the node lacks installs from wheels; and the plain-torch ViT it times
where open_clip cannot be imported has open_clip's parameters and FLOPs.
"""

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from bench import gpu_check

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here: the script would run its checks")
def test_without_a_gpu_it_says_so_and_exits_0_at_once():
    report = ROOT / "bench" / "GPU.md"
    before = report.stat().st_mtime_ns if report.exists() else None
    start = time.monotonic()
    done = run(timeout=120)
    seconds = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"no GPU visible (torch {torch.__version__}, CUDA unavailable): nothing to check"
    ], done.stdout
    assert seconds < 20, f"took {seconds:.1f} s (python and torch start in a few seconds)"
    assert (report.stat().st_mtime_ns if report.exists() else None) == before, "bench/GPU.md was written"


def test_quick_cpu_run_runs_every_check_and_writes_one_row_each(tmp_path):
    out = tmp_path / "GPU.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny tensors: a second thread only waits on a busy machine
    done = run("--device", "cpu", "--quick", "--out", str(out), timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    names = [name for name, _ in gpu_check.checks(gpu_check.QUICK)]
    assert len(names) == 18
    verdicts = [line.split(":")[0] for line in done.stdout.splitlines() if line.startswith(("PASS ", "FAIL "))]
    assert verdicts == [f"PASS {name}" for name in names], done.stdout
    text = out.read_text()
    for name in names:
        assert f"\n| {name} | PASS | " in text, name
    figures = {line.split(" | ")[0].removeprefix("| "): line for line in text.splitlines() if " | PASS | " in line}
    assert "tensors on cpu" in figures["placement"]
    assert "x faster" in figures["today vs now"]
    for precision in ("bf16", "fp32", "tf32"):
        assert "ms/step" in figures[f"step {precision}"] and "MFU" in figures[f"step {precision}"]
    assert figures["resume"].count("model tensors equal") == 4 and "graph step on cpu (fp32)" in figures["resume"]
    assert "queues equal" in figures["graphs = eager"] and "n/a" in figures["host syncs"]  # no GPU to wait for
    assert "images/s" in figures["extraction"]
    assert "queues equal" in figures["graph step"] and "an MP-16 epoch" in figures["graph step"]
    assert "reading them" in figures["scale"] and "with the bank" in figures["scale"]
    assert "float64 brute force equal" in figures["lists"] and "recall against exact fp32 lists" in figures["lists"]
    assert "64 mined encoded" in figures["bank"] and "with a hundredth of a refresh" in figures["bank"]
    targets = text.split("## Targets")[1]
    for target in (
        "5x faster than today's path",
        "MFU >= 40% in bf16",
        "2 processes >= 2x the throughput",
        "k 128, <= 2 min",
        "with the bank <= 1.3x the published step",
        "whole step captured",
    ):
        assert target in targets
    assert "Product API expected and not found: none" in text
    assert "| card | none: --device cpu" in text


def test_neither_the_script_nor_its_project_modules_import_ray_optuna_or_moocore():
    code = (
        "import sys, bench.gpu_check as g; g.product_modules(); "
        "bad = {'ray', 'optuna', 'moocore'} & {m.split('.')[0] for m in sys.modules}; assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_gpu_busy_time_counts_overlapping_work_once():
    assert gpu_check.busy_us([(0, 2), (1, 3), (5, 6)]) == 4
    assert gpu_check.busy_us([(0, 10), (1, 3), (10, 12)]) == 12
    assert gpu_check.busy_us([]) == 0


def test_wheels_are_chosen_when_missing_or_older(tmp_path):
    def wheel(name: str) -> Path:
        return tmp_path / f"{name}-py3-none-any.whl"

    import numpy as np

    chosen = gpu_check.wheels_to_install(
        [
            wheel("gpu_check_no_such_module-1.0"),  # missing
            wheel(f"numpy-{np.__version__}"),  # as installed
            wheel("numpy-999.0"),  # newer than installed
            wheel("torchvision-999.0"),  # present or not: never replaced, it must match torch
        ]
    )
    names = [w.name for w in chosen]
    assert "gpu_check_no_such_module-1.0-py3-none-any.whl" in names
    assert "numpy-999.0-py3-none-any.whl" in names
    assert f"numpy-{np.__version__}-py3-none-any.whl" not in names
    has_torchvision = gpu_check.importlib.util.find_spec("torchvision") is not None
    assert ("torchvision-999.0-py3-none-any.whl" in names) == (not has_torchvision)


def test_a_wheel_installs_into_a_folder_that_then_imports(tmp_path):
    path = tmp_path / "gpu_check_probe-1.0-py3-none-any.whl"
    files = {
        "gpu_check_probe/__init__.py": "VALUE = 42\n",
        "gpu_check_probe-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: gpu-check-probe\nVersion: 1.0\n",
        "gpu_check_probe-1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr("gpu_check_probe-1.0.dist-info/RECORD", "".join(f"{n},,\n" for n in [*files, "RECORD"]))
    target = tmp_path / "target"
    target.mkdir()
    gpu_check.install_wheels([path], target)
    code = f"import sys; sys.path.insert(0, {str(target)!r}); import gpu_check_probe; print(gpu_check_probe.VALUE)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "42", done.stderr


def test_plain_vit_has_open_clip_s_parameters_and_flops(tmp_path):
    pytest.importorskip("open_clip")
    from geoloc.data.backbone import load_backbone

    config = tmp_path / "ViT-twin.json"
    config.write_text(json.dumps(gpu_check.VIT_TINY))
    tower = load_backbone(str(config), pretrained="random").model
    plain = gpu_check.PlainViT.from_config(gpu_check.VIT_TINY).eval()

    def count(model):
        return sum(p.numel() for p in model.parameters())

    assert count(plain) == count(tower)
    size = gpu_check.VIT_TINY["vision_cfg"]["image_size"]
    images = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        assert plain(images).shape == tower.encode_image(images).shape
    assert gpu_check.count_flops(lambda: plain(images)) == gpu_check.count_flops(lambda: tower.encode_image(images))
    model, what = gpu_check.extraction_model(gpu_check.Context(gpu_check.QUICK, torch.device("cpu")), plain=True)
    assert isinstance(model, gpu_check.PlainViT) and what.startswith("PlainViT twin of tiny ViT")


def _child_peaks(results) -> None:
    import resource

    from bench.common import peak_rss_bytes

    results.put((peak_rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))


def test_a_spawned_trial_s_peak_rss_is_its_own_not_its_parent_s():
    """The memory check's host peak: a spawned child inherits ``ru_maxrss`` from its parent at the fork
    (the 9.66 GiB of the first GPU run); ``peak_rss_bytes`` (VmHWM) is the child's own."""
    import multiprocessing

    import numpy as np

    held = np.ones(3 * 2**26)  # 1.5 GiB resident in this process
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_child_peaks, args=(results,))
    child.start()
    own, inherited = results.get(timeout=60)
    child.join(30)
    assert inherited >= held.nbytes  # what getrusage reports: the parent's size
    assert own < 2**30  # the child imported torch and nothing more
