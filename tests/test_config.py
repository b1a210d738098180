"""Config: defaults < YAML < flags, every problem reported in one message."""

from __future__ import annotations

import pytest
import yaml

from visattn.train.config import ConfigError, TrainConfig, resolve_config


def test_precedence(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("epochs: 3\nlr: 0.01\nattention: none\n")
    cfg = resolve_config(cfg_file, lr=0.02, seed=None)
    assert cfg.epochs == 3 and cfg.lr == 0.02 and cfg.attention == "none"
    assert cfg.batch_size == TrainConfig().batch_size and cfg.seed == 0
    assert cfg.model_kwargs()["attention"] is None


def test_saved_config_reproduces_the_run_config(tmp_path):
    cfg = resolve_config(None, epochs=2, data_dir=tmp_path, attention="mhsa")
    saved = tmp_path / "config.yaml"
    saved.write_text(cfg.to_yaml())
    assert resolve_config(saved) == cfg


def test_every_problem_in_one_message(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("epochs: zero\nlr: -1\nbatchsize: 3\n")
    with pytest.raises(ConfigError) as err:
        resolve_config(cfg_file, data_dir=tmp_path / "missing", attention="cbam9")
    message = str(err.value)
    assert "\n" not in message
    for part in (
        "epochs:",
        "lr: Input should be greater than 0",
        "unknown key 'batchsize'",
        "data_dir:",
        "does not exist",
        "unknown attention 'cbam9'",
    ):
        assert part in message


@pytest.mark.parametrize(
    ("text", "message"),
    [("epochs: [1, 2", "not valid YAML at line"), ("- 1\n- 2\n", "must hold a mapping")],
)
def test_bad_files(tmp_path, text, message):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(text)
    with pytest.raises(ConfigError, match=message):
        resolve_config(cfg_file)
    with pytest.raises(ConfigError, match="cannot read config file"):
        resolve_config(tmp_path / "nope.yaml")


def test_yaml_is_plain():
    assert yaml.safe_load(TrainConfig().to_yaml())["model"] == "attention_cnn"


def test_every_field_documents_itself_and_names_a_registered_task():
    """The schema is the only source of the command line's help: no field without it."""
    assert all(field.description for field in TrainConfig.model_fields.values())
    with pytest.raises(ConfigError, match="unknown task 'segmentation9'; valid: classification"):
        resolve_config(None, task="segmentation9")


def test_unset_image_size_leaves_the_choice_to_the_data():
    assert TrainConfig().img_size is None and TrainConfig().data_kwargs()["image_size"] is None
    assert TrainConfig(img_size=32).data_kwargs()["image_size"] == 32
