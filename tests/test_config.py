import pytest

from jrm_engine.config import OPTIONAL, JRMConfig, _flatten, load_config


def test_presets_and_overrides(tmp_path):
    cfg = load_config("smoke", overrides={"loss.alpha": "0", "train.betas": "[0.8, 0.9]", "model.backbone": "none",
                                          "train.lr": "4e-3", "train.max_steps": "12"})
    assert cfg.loss.alpha == 0.0 and isinstance(cfg.loss.alpha, float)
    assert cfg.train.lr == 4e-3 and cfg.train.max_steps == 12
    assert cfg.train.betas == (0.8, 0.9)
    assert cfg.model.backbone is None
    assert cfg.model.image_size == 56  # from the preset


def test_yaml_and_toml_files(tmp_path):
    (tmp_path / "a.yaml").write_text("loss:\n  rank_loss: bt_uncertainty\ntrain:\n  lr: 0.01\n")
    (tmp_path / "b.toml").write_text("[loss]\nmargin = 0.5\n[model.tiny]\ntext_layers = 3\n")
    assert load_config("tiny", tmp_path / "a.yaml").loss.rank_loss == "bt_uncertainty"
    cfg = load_config("tiny", tmp_path / "b.toml", {"loss.margin": "0.25"})
    assert cfg.model.tiny.text_layers == 3 and cfg.loss.margin == 0.25  # the command line wins over the file


def test_roundtrip_through_dict():
    cfg = load_config("smoke")
    assert JRMConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


@pytest.mark.parametrize("bad", [{"loss.nope": "1"}, {"nope.alpha": "1"}, {"train.bf16": "maybe"}, {"train.lr": "fast"}])
def test_bad_overrides_name_the_key(bad):
    with pytest.raises(ValueError, match=list(bad)[0].split(".")[0]):
        load_config("tiny", overrides=bad)


@pytest.mark.parametrize("key,value,message", [
    ("train.head_lr", "0", "must be positive"), ("train.vision_lr", "-1", "must be at least 0"),
    ("train.head_lr", "fast", "expected float"), ("train.num_threads", "0", "must be at least 1"),
    ("data.path", "[1]", "expected str")])
def test_fields_that_may_be_none_are_checked_once_set(key, value, message):
    with pytest.raises(ValueError, match=f"config {key}: {message}"):
        load_config("tiny", overrides={key: value})
    section, name = key.split(".")
    assert getattr(getattr(load_config("tiny", overrides={key: "none"}), section), name) is None  # unset again


def test_every_field_without_a_default_has_a_type_to_check():
    assert {key for key, value in _flatten(JRMConfig().to_dict()).items() if value is None} == set(OPTIONAL)


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        load_config("huge")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config("tiny", tmp_path / "missing.yaml")
