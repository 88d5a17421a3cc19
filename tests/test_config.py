"""Config loading: YAML + overrides, errors that name key paths, the shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from lovaszseg import errors
from lovaszseg.config import MAX_LR, Config, ConfigError, builtin_config, load_config


@pytest.mark.parametrize("name", ["salt", "salt-demo", "salt-winners", "voc", "voc-binary"])
def test_shipped_configs_validate(name: str) -> None:
    config = load_config(builtin_config(name))
    assert config.output.name == name
    assert config.stages and all(stage.epochs >= 1 for stage in config.stages)


def test_repo_configs_folder_is_the_package_configs() -> None:
    repo_configs = Path(__file__).resolve().parents[1] / "configs"
    assert sorted(p.name for p in repo_configs.glob("*.yaml")) == [
        "salt-demo.yaml",
        "salt-winners.yaml",
        "salt.yaml",
        "voc-binary.yaml",
        "voc.yaml",
    ]


def test_two_stage_salt_recipe() -> None:
    config = load_config(builtin_config("salt"))
    assert config.stages[0].loss == "bce"
    assert "lovasz_hinge" in config.stages[1].loss
    assert config.data.options["pad_size"] == 128 and config.model.encoder == "resnet34"


def test_winners_recipe_is_the_salt_recipe_with_the_winners_model() -> None:
    salt, winners = load_config(builtin_config("salt")), load_config(builtin_config("salt-winners"))
    assert (winners.model.empty_head, winners.model.deep_supervision, winners.model.hypercolumn) == (0.25, 0.5, True)
    assert winners.model.options["decoder_attention_type"] == "scse"
    lovasz = winners.stages[1]
    assert (lovasz.empty_images, lovasz.swa_epochs, lovasz.schedule) == ("skip", 3, "cosine_restarts")
    assert winners.data == salt.data and [s.loss for s in winners.stages] == [s.loss for s in salt.stages]


def test_overrides_apply_in_order_and_parse_yaml_scalars() -> None:
    config = load_config(
        builtin_config("salt-demo"),
        ["stages.1.epochs=7", "model.encoder=resnet18", "train.grad_clip=1.5", "data.root=null", "stages.1.epochs=8"],
    )
    assert config.stages[1].epochs == 8 and config.model.encoder == "resnet18"
    assert config.train.grad_clip == 1.5 and config.data.root is None


def test_round_trip_through_a_plain_dict() -> None:
    config = load_config(builtin_config("voc"))
    assert load_config(config.model_dump()) == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.encodr=resnet18"], r"model\.encodr: unknown key; allowed here: arch, deep_supervision, empty_head"),
        (["stages.0.epochs=zero"], r"stages\.0\.epochs: Input should be a valid integer"),
        (["stages.0.epochs=0"], r"stages\.0\.epochs: Input should be greater than or equal to 1"),
        (["train.amp=fp8"], r"train\.amp: .*'none', 'bf16', 'fp16' or 'auto', got 'fp8'"),
        (["stages.0.loss=lovasz"], r"stages\.0\.loss: .*unknown loss 'lovasz'"),
        (["data.options.bogus=1"], r"data\.options: .*unknown option\(s\) \['bogus'\]"),
        (["data.name=coco"], r"data\.name: .*unknown dataset 'coco'; expected one of tgs, voc, voc_binary, folder"),
        (["stages.5.lr=0.1"], r"stages\.5 is not an index of a list of 2"),
        (["epochs"], "is not of the form key.path=value"),
        (["stages.0.lr.x=1"], r"stages\.0\.lr is a value, not a section"),
        (["stages.0.loss={lovasz_hinge: {per_image: 'false'}}"], r"stages\.0\.loss: .*per_image must be true or false"),
        (
            ["stages.0.loss={bce: -0.5}"],
            r"stages\.0\.loss: .*'bce': weight must be a finite number >= 0, got -0.5",
        ),
    ],
)
def test_errors_name_the_key_path(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(builtin_config("salt-demo"), overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["stages.0.lr=0"], r"stages\.0\.lr: Input should be greater than 0"),
        (["stages.0.lr=-0.001"], r"stages\.0\.lr: Input should be greater than 0"),
        (["stages.1.lr=30"], r"stages\.1\.lr: Input should be less than or equal to 10"),
        (["stages.0.weight_decay=5"], r"stages\.0\.weight_decay: Input should be less than or equal to 1"),
        (["stages.0.weight_decay=-1"], r"stages\.0\.weight_decay: Input should be greater than or equal to 0"),
        (["stages.0.momentum=1"], r"stages\.0\.momentum: Input should be less than 1"),
        (["stages.0.min_lr=0.1"], r"stages\.0: .*min_lr \(0\.1\) must not exceed lr \(0\.003\)"),
        (["train.grad_clip=0"], r"train\.grad_clip: Input should be greater than 0"),
        (["train.seed=-1"], r"train\.seed: Input should be greater than or equal to 0"),
        (["train.seed=4294967296"], r"train\.seed: Input should be less than or equal to 4294967295"),
        (["output.progress_seconds=0"], r"output\.progress_seconds: Input should be greater than 0"),
        (["stages.0.ema=1"], r"stages\.0\.ema: Input should be less than 1"),
        (["stages.0.ema=0"], r"stages\.0\.ema: Input should be greater than 0"),
        (["stages.0.warmup_steps=-1"], r"stages\.0\.warmup_steps: Input should be greater than or equal to 0"),
        (["stages.0.warmup_start_factor=0"], r"stages\.0\.warmup_start_factor: Input should be greater than 0"),
        (["stages.0.warmup_start_factor=2"], r"stages\.0\.warmup_start_factor: .*less than or equal to 1"),
        (["stages.0.poly_power=0"], r"stages\.0\.poly_power: Input should be greater than 0"),
    ],
)
def test_absurd_values_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(builtin_config("salt-demo"), overrides)


def test_class_weights_must_fit_the_datasets_classes() -> None:
    voc = load_config(builtin_config("voc"), ["stages.0.loss={ce: {class_weights: [" + ", ".join(["1"] * 21) + "]}}"])
    assert voc.stages[0].loss == {"ce": {"class_weights": [1] * 21}}
    message = r"stages\.0\.loss: loss 'lovasz_softmax': class_weights has 2 weights but the data has 21 classes"
    with pytest.raises(ConfigError, match=message):
        load_config(builtin_config("voc"), ["stages.0.loss={lovasz_softmax: {class_weights: [1, 2]}}"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["stages.0.swa_epochs=4"], r"stages\.0: .*swa_epochs \(4\) must not exceed epochs \(3\)"),
        (["stages.0.swa_epochs=-1"], r"stages\.0\.swa_epochs: Input should be greater than or equal to 0"),
        (
            ["stages.0.epochs=6", "stages.0.schedule=cosine_restarts", "stages.0.cycles=3", "stages.0.swa_epochs=4"],
            r"stages\.0: .*swa_epochs \(4\) must not exceed cycles \(3\)",
        ),
        (["stages.1.swa_epochs=2", "stages.1.ema=0.99"], r"stages\.1: .*swa_epochs \(2\) does not combine with ema"),
    ],
)
def test_swa_epochs_errors_name_the_stage_and_values(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(builtin_config("salt-demo"), overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        ["stages.0.swa_epochs=0", "stages.0.ema=0.99"],  # 0 is off: nothing to combine
        ["stages.0.swa_epochs=null", "stages.0.ema=0.99"],
        ["stages.0.swa_epochs=3"],  # every epoch of the stage
        ["stages.0.epochs=6", "stages.0.schedule=cosine_restarts", "stages.0.cycles=3", "stages.0.swa_epochs=3"],
    ],
)
def test_swa_epochs_accepted(overrides: list[str]) -> None:
    load_config(builtin_config("salt-demo"), overrides)


def test_bounds_keep_the_limits_themselves() -> None:
    config = load_config(
        builtin_config("salt-demo"),
        [f"stages.0.lr={MAX_LR}", "stages.0.weight_decay=1", "stages.0.min_lr=10", "train.seed=4294967295"],
    )
    assert config.stages[0].lr == config.stages[0].min_lr == MAX_LR and config.train.seed == 2**32 - 1


def test_config_error_is_the_typed_error() -> None:
    assert ConfigError is errors.ConfigError and issubclass(ConfigError, errors.LovaszsegError)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found: .*missing\.yaml"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "configs.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"config .*configs\.yaml is a directory, not a YAML file"):
        load_config(tmp_path / "configs.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    with pytest.raises(ConfigError, match=r"bad\.yaml is not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list\.yaml must hold a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ConfigError, match=r"cannot read config file .*binary\.yaml: 'utf-8' codec"):
        load_config(tmp_path / "binary.yaml")


def test_defaults_are_a_valid_config() -> None:
    assert isinstance(load_config(), Config)
