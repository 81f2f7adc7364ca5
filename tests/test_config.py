import subprocess
import sys
from pathlib import Path

import pydantic
import pytest
import yaml

from geoloc.common.validation import ConfigError
from geoloc.study.config import parse_job
from geoloc.study.studyfile import load_study_file, resolved_study

STUDIES = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.yaml"))

BAD = [
    ({"train": {"batch_sise": 8}}, "train.batch_sise: unknown key"),
    ({"train": {"batch_size": 0}}, "train.batch_size: must be >= 1"),
    ({"train": {"batch_size": "big"}}, "train.batch_size: expected an integer"),
    ({"train": {"batch_size": 8.5}}, "train.batch_size: expected an integer"),
    ({"train": {"queue_size": -1}}, "train.queue_size: must be >= 0"),
    ({"train": {"lr": 0}}, "train.lr: must be > 0"),
    ({"train": {"noise": {"batch_sigma": -0.1}}}, "train.noise.batch_sigma: must be >= 0"),
    ({"train": {"noise": {"target": "pixels"}}}, "train.noise.target: must be one of gps, embedding"),
    ({"train": {"precision": "fp8"}}, "train.precision: must be one of"),
    ({"eval": {"thresholds_km": []}}, "eval.thresholds_km: needs at least one threshold"),
    ({"eval": {"score_weights": [0, 0, 0, 0, 0]}}, "eval.score_weights: must be >= 0 with a positive sum"),
    ({"eval": {"score_weights": [1, 1]}}, "eval.score_weights: needs one weight per threshold"),
    ({"model": {"rff_scales": []}}, "model.rff_scales: needs one or more positive scales"),
    ({"model": {"learn_temperature": "yes"}}, "model.learn_temperature: expected true or false"),
    ({"data": {"val": []}}, "data.val: needs at least one evaluation set"),
    ({"data": {"offline": {"landmark_share": 2}}}, "data.offline.landmark_share: must lie in [0.0, 1.0]"),
    ({"data": "offline"}, "data: expected a mapping"),
    ({"train": {"batch_size": True}}, "train.batch_size: expected an integer, got bool True"),
    ({"train": {"batch_size": "8"}}, "train.batch_size: expected an integer, got str '8'"),
    ({"train": {"lr": True}}, "train.lr: expected a finite number"),
    ({"train": {"lr": "nan"}}, "train.lr: expected a finite number"),
    ({"model": {"init_temperature": 20}}, "model.init_temperature: must lie in [0.01, 10]"),
]


@pytest.mark.parametrize("data,message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_configuration_names_the_key(data, message):
    with pytest.raises(ConfigError) as err:
        parse_job(data)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_defaults_are_the_published_recipe():
    cfg = parse_job({})
    assert cfg.model.rff_scales == (1.0, 16.0, 256.0) and cfg.model.hidden_dim == 1024
    assert cfg.train.queue_size == 4096 and cfg.train.lr == 3e-5 and cfg.train.lr_gamma == 0.87
    assert parse_job({"train": {"lr": "3e-5"}}).train.lr == 3e-5  # YAML reads 3e-5 as a string
    assert parse_job({"train": {"lr": 1}}).train.lr == 1.0


def test_a_validated_configuration_cannot_be_changed():
    cfg = parse_job({})
    with pytest.raises(pydantic.ValidationError):
        cfg.train.batch_size = 0
    with pytest.raises(AttributeError):
        cfg.eval.score_weights.append(1.0)  # lists are stored as tuples
    assert cfg.train.batch_size == 512 and len(cfg.eval.score_weights) == 5
    changed = cfg.model_copy(update={"train": cfg.train.model_copy(update={"batch_size": 0})})
    with pytest.raises(ConfigError, match="train.batch_size: must be >= 1, got 0"):
        parse_job(changed.model_dump())  # a changed copy is revalidated


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_resolved_study_reads_back_to_the_same_study(path, tmp_path):
    study = load_study_file(path)
    dumped = tmp_path / "study.yaml"
    dumped.write_text(yaml.safe_dump(resolved_study(study), sort_keys=False))
    again = load_study_file(dumped)
    assert again == study and [e.name for e in again.space] == [e.name for e in study.space]
    assert resolved_study(again) == resolved_study(study)


@pytest.mark.parametrize("data,message", [BAD[1], BAD[6], ({"trian": {}}, "trian: unknown key")])
def test_command_line_exits_2_with_one_line(tmp_path, data, message):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "geoloc.train", str(config), "--out", str(out)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and str(config) in proc.stderr
    assert not out.exists()


def test_unreadable_yaml_names_the_file(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("train: [unclosed\n")
    proc = subprocess.run(
        [sys.executable, "-m", "geoloc.train", str(config), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "broken.yaml" in proc.stderr and "Traceback" not in proc.stderr
