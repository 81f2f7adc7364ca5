import subprocess
import sys

import pytest
import yaml

from geoloc.config import ConfigError, RunConfig, from_dict

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
]


@pytest.mark.parametrize("data,message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_configuration_names_the_key(data, message):
    with pytest.raises(ConfigError) as err:
        from_dict(RunConfig, data)
    assert message in str(err.value)


def test_defaults_are_the_published_recipe():
    cfg = from_dict(RunConfig, {})
    assert cfg.model.rff_scales == [1.0, 16.0, 256.0] and cfg.model.hidden_dim == 1024
    assert cfg.train.queue_size == 4096 and cfg.train.lr == 3e-5 and cfg.train.lr_gamma == 0.87
    assert from_dict(RunConfig, {"train": {"lr": "3e-5"}}).train.lr == 3e-5  # YAML reads 3e-5 as a string


@pytest.mark.parametrize("data,message", [BAD[1], BAD[6], ({"trian": {}}, "trian: unknown key")])
def test_command_line_exits_2_with_one_line(tmp_path, data, message):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "geoloc.train", str(config), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and str(config) in proc.stderr
    assert not out.exists()


def test_unreadable_yaml_names_the_file(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("train: [unclosed\n")
    proc = subprocess.run([sys.executable, "-m", "geoloc.train", str(config), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2 and "broken.yaml" in proc.stderr and "Traceback" not in proc.stderr
