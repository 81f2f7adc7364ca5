"""bf16 on a CPU (issue 26, item 6): passes without gradient run in fp32 on any CPU, so a bf16 trial's
evaluation equals an fp32 one's; bf16 on a CPU that only emulates it is refused with one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from geoloc.parts.precision import native_bf16, precision
from geoloc.tasks.geoclip.trainer import Trainer

from .conftest import build

CPU = torch.device("cpu")


def test_eval_part_on_a_cpu_is_fp32_and_the_step_keeps_bf16():
    x = torch.randn(4, 8)
    w = torch.randn(8, 3)
    with precision("bf16", CPU, part="eval"):
        assert not torch.is_autocast_enabled("cpu")
        assert (x @ w).dtype == torch.float32
        assert torch.equal(x @ w, x @ w)
    with precision("bf16", CPU):
        assert torch.is_autocast_enabled("cpu")
        assert (x @ w).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="part"):
        with precision("bf16", CPU, part="evaluation"):
            pass


@pytest.mark.skipif(not native_bf16(), reason="a bf16 trial is refused on this CPU (the next test)")
def test_a_bf16_trials_evaluation_equals_the_fp32_one_to_the_last_digit(small_config):
    """Same weights, same sets: the metrics of a bf16 trainer's evaluation are the fp32 trainer's, exactly."""
    small_config["train"]["precision"] = "bf16"
    bf16 = Trainer(build(small_config))
    small_config["train"]["precision"] = "fp32"
    fp32 = Trainer(build(small_config))
    fp32.model.load_state_dict(bf16.model.state_dict())
    got, expected = bf16.evaluate(), fp32.evaluate()
    assert {k: v for k, v in got.items() if k != "eval_s"} == {k: v for k, v in expected.items() if k != "eval_s"}


def test_bf16_on_a_cpu_without_native_bf16_is_refused_with_one_line():
    """oneDNN limited to AVX2 has no native bf16: ``check_precision`` raises a ConfigError naming the key."""
    code = (
        "import torch\n"
        "from geoloc.common.validation import ConfigError\n"
        "from geoloc.parts.precision import check_precision, native_bf16\n"
        "assert not native_bf16()\n"
        "check_precision('fp32', torch.device('cpu'))\n"
        "try:\n"
        "    check_precision('bf16', torch.device('cpu'))\n"
        "except ConfigError as e:\n"
        "    print(e)\n"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("train.precision: bf16 on this CPU") and out.stdout.count("\n") == 1
