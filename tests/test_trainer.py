"""The training loop on tiny data: stages, resume, interruptions, divergence, run folders, EMA, SWA, init_from."""

from __future__ import annotations

import io
import math
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import tiny_salt_config
from rich.console import Console
from torch.optim.swa_utils import update_bn

import lovaszseg.training.trainer as engine_train
from lovaszseg.config import load_config
from lovaszseg.errors import ConfigError, RunFolderError, TrainingError
from lovaszseg.runtime.acceleration import AccelerationOverride
from lovaszseg.scoring.engine import Scorer
from lovaszseg.storage import load_model
from lovaszseg.storage.checkpoint import load_checkpoint
from lovaszseg.training import train
from lovaszseg.workflows.runs import evaluate_run


def _loss_with_hook(hook: Callable[[int, torch.Tensor], torch.Tensor]) -> Callable[..., Callable]:
    """A ``build_loss`` whose losses pass (call number, value) through ``hook`` on every call."""
    real_build_loss = engine_train.build_loss
    calls = {"n": 0}

    def build(spec, ignore_index=None, num_classes=None):
        loss = real_build_loss(spec, ignore_index=ignore_index, num_classes=num_classes)

        def forward(logits, masks):
            calls["n"] += 1
            return hook(calls["n"], loss(logits, masks))

        return forward

    return build


def _config(root: Path, runs: Path, **sections):
    return load_config(tiny_salt_config(root, runs, **sections))


def test_two_stage_run_writes_the_run_folder_and_stage_two_starts_from_stage_one_best(
    tiny_salt: Path, tmp_path: Path
) -> None:
    # Stage 2 with a vanishing learning rate: its weights stay those it started from.
    config = _config(
        tiny_salt,
        tmp_path,
        stages=[
            {"name": "bce", "loss": "bce", "epochs": 3, "lr": 0.02},
            {"name": "frozen", "loss": "lovasz_hinge", "epochs": 1, "lr": 1e-12, "schedule": "none"},
        ],
    )
    result = train(config)
    run = result.run_dir
    for name in ("config.yaml", "summary.csv", "curves.png", "last.pt", "best.pt", "model.safetensors"):
        assert (run / name).is_file(), name
    assert not (run / "config.json").exists()  # the config is saved once (and in the export's header)
    assert [row["stage"] for row in result.history] == ["1-bce", "1-bce", "1-bce", "2-frozen"]
    assert set(result.best_metrics) >= {"salt_score", "iou", "image_iou", "best_threshold"}
    (run / "config.yaml").unlink()  # the exported file alone is enough for inference
    exported = load_model(run / "model.safetensors")
    best = load_checkpoint(run / "best.pt")
    assert exported.config == config and best["metrics"] == result.best_metrics
    assert all(torch.equal(tensor, best["model"][name]) for name, tensor in exported.model.state_dict().items())
    stage_one_best = load_checkpoint(run / "stage1_best.pt")["model"]
    stage_two = load_checkpoint(run / "stage2_last.pt")["model"]
    for name, tensor in stage_two.items():
        if name.endswith(("weight", "bias")) and "bn" not in name and "running" not in name:
            torch.testing.assert_close(tensor, stage_one_best[name], rtol=0, atol=1e-9)


def test_resume_after_interruptions_gives_the_same_weights(
    tiny_salt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tiny_salt, tmp_path)  # 2 stages of 2 epochs, 2 training steps and 1 validation batch each
    straight = train(config, run_dir=tmp_path / "straight")
    run = tmp_path / "interrupted"

    # First stop: between epochs, at the end of stage 1.
    first = train(config, run_dir=run, stop_after_epochs=2)
    assert not first.completed and not (run / "model.safetensors").exists()
    assert (load_checkpoint(run / "last.pt")["stage"], load_checkpoint(run / "last.pt")["epoch"]) == (0, 2)

    # Second stop: SIGTERM during the first step of stage 2's second epoch; that epoch is dropped.
    def terminate_at_fourth_call(call: int, value: torch.Tensor) -> torch.Tensor:
        if call == 4:  # train, train, validation, then the next epoch's first step
            os.kill(os.getpid(), signal.SIGTERM)
        return value

    with monkeypatch.context() as patch:
        patch.setattr(engine_train, "build_loss", _loss_with_hook(terminate_at_fourth_call))
        second = train(resume=run)
    assert not second.completed and second.stop_signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert (load_checkpoint(run / "last.pt")["stage"], load_checkpoint(run / "last.pt")["epoch"]) == (1, 1)

    resumed = train(resume=run)
    assert resumed.completed and resumed.run_dir == run and (run / "model.safetensors").is_file()
    final_a = load_checkpoint(straight.run_dir / "last.pt")["model"]
    final_b = load_checkpoint(run / "last.pt")["model"]
    assert all(torch.equal(final_a[name], final_b[name]) for name in final_a)
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]
    assert [r["iou"] for r in straight.history] == [r["iou"] for r in resumed.history]


def test_resume_takes_no_config_or_overrides(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="resume continues a run with its saved config"):
        train(tmp_path / "salt.yaml", resume=tmp_path / "run")
    with pytest.raises(ConfigError, match="resume continues a run with its saved config"):
        train(None, ["train.seed=1"], resume=tmp_path / "run")


def test_an_interruption_in_the_first_epoch_is_resumable_from_the_start(
    tiny_salt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tiny_salt, tmp_path, stages=[{"name": "bce", "loss": "bce", "epochs": 2, "lr": 0.01}])
    straight = train(config, run_dir=tmp_path / "straight")

    def interrupt_at_first_call(call: int, value: torch.Tensor) -> torch.Tensor:
        if call == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return value

    with monkeypatch.context() as patch:
        patch.setattr(engine_train, "build_loss", _loss_with_hook(interrupt_at_first_call))
        stopped = train(config, run_dir=tmp_path / "stopped")
    assert not stopped.completed and stopped.stop_signal == signal.SIGINT and stopped.history == []
    assert load_checkpoint(tmp_path / "stopped" / "last.pt")["epoch"] == 0  # the initial weights, resumable
    resumed = train(resume=tmp_path / "stopped")
    assert resumed.completed
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]


def test_a_second_signal_stops_at_once(tiny_salt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def two_signals(call: int, value: torch.Tensor) -> torch.Tensor:
        if call == 1:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("the second signal must stop the step it arrives in")

    monkeypatch.setattr(engine_train, "build_loss", _loss_with_hook(two_signals))
    with pytest.raises(KeyboardInterrupt):
        train(_config(tiny_salt, tmp_path), run_dir=tmp_path / "run")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_images_the_model_cannot_take_fail_before_the_run_folder_is_made(tiny_salt: Path, tmp_path: Path) -> None:
    config = _config(
        tiny_salt,
        tmp_path,
        model={"arch": "FPN", "options": {}},
        data={"options": {"fold": 0, "n_folds": 4, "pad_size": 101}},
    )
    message = r"first image of tgs split 'train' is 101x101, .* divisible by 32: pad or resize to 128x128"
    with pytest.raises(ConfigError, match=message):
        train(config)
    assert not (tmp_path / "tiny").exists()


def test_non_finite_loss_stops_with_stage_epoch_and_step_and_keeps_the_last_checkpoint(
    tiny_salt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def nan_at_fifth_call(call: int, value: torch.Tensor) -> torch.Tensor:
        return value * float("nan") if call == 5 else value  # step 2 of epoch 2

    monkeypatch.setattr(engine_train, "build_loss", _loss_with_hook(nan_at_fifth_call))
    config = _config(tiny_salt, tmp_path)
    with pytest.raises(TrainingError, match=r"non-finite loss .* 1-bce 2/2, step 2.*kept: .*nan/last\.pt"):
        train(config, run_dir=tmp_path / "nan")
    assert load_checkpoint(tmp_path / "nan" / "last.pt")["epoch"] == 1
    assert not (tmp_path / "nan" / "model.safetensors").exists()


def test_an_exploding_loss_stops_the_run_and_exports_nothing(
    tiny_salt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode_at_fourth_call(call: int, value: torch.Tensor) -> torch.Tensor:
        return value * 1e6 if call == 4 else value  # train, train, validation, then epoch 2 step 1

    monkeypatch.setattr(engine_train, "build_loss", _loss_with_hook(explode_at_fourth_call))
    config = _config(tiny_salt, tmp_path)
    with pytest.raises(TrainingError, match=r"exploding \(.* > 1000\) loss .*stages\.0\.lr=0\.01"):
        train(config, run_dir=tmp_path / "boom")
    assert not (tmp_path / "boom" / "model.safetensors").exists()
    off = _config(
        tiny_salt,
        tmp_path,
        stages=[{"name": "bce", "loss": "bce", "epochs": 2, "lr": 0.01}],
        train={"seed": 0, "device": "cpu", "divergence_factor": None},
    )
    with monkeypatch.context() as patch:
        patch.setattr(engine_train, "build_loss", _loss_with_hook(explode_at_fourth_call))
        assert train(off, run_dir=tmp_path / "unchecked").completed


def test_weights_that_turn_non_finite_are_never_saved_as_best_or_exported(
    tiny_salt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_step = engine_train.Trainer.training_step
    steps = {"n": 0}

    def poisoning_step(self, *args, **kwargs):  # a BatchNorm variance overflows in the 3rd step (epoch 2)
        loss = real_step(self, *args, **kwargs)
        steps["n"] += 1
        if steps["n"] == 3:
            self.model.encoder.bn1.running_var.fill_(float("inf"))
        return loss

    monkeypatch.setattr(engine_train.Trainer, "training_step", poisoning_step)
    with pytest.raises(
        TrainingError, match=r"after epoch 2 of stage 1-bce, 1 weight tensor.*encoder\.bn1\.running_var"
    ):
        train(_config(tiny_salt, tmp_path), run_dir=tmp_path / "inf")
    run = tmp_path / "inf"
    assert not (run / "model.safetensors").exists()
    for name in ("best.pt", "last.pt", "stage1_best.pt", "stage1_last.pt"):
        if (run / name).exists():
            state = load_checkpoint(run / name)
            assert state["epoch"] == 1 and torch.isfinite(state["model"]["encoder.bn1.running_var"]).all(), name


def test_existing_run_folder_is_never_overwritten_silently(tiny_salt: Path, tmp_path: Path) -> None:
    config = _config(tiny_salt, tmp_path, stages=[{"name": "bce", "loss": "bce", "epochs": 1}])
    first = train(config)
    second = train(config)  # the default name is taken: a new one
    assert first.run_dir == tmp_path / "tiny" and second.run_dir == tmp_path / "tiny-2"
    with pytest.raises(RunFolderError, match=r"already holds a run; pass --overwrite"):
        train(config, run_dir=first.run_dir)  # an explicit folder is never renamed
    marker = first.run_dir / "mine.txt"
    marker.write_text("x")
    third = train(config, overwrite=True)
    assert third.run_dir == first.run_dir and not marker.exists()


def _never_improving(root: Path, runs: Path, monkeypatch: pytest.MonkeyPatch, patience: int):
    """Stages of 5 and 1 one-step epochs whose validation metrics never change, with early stopping."""
    flat = {"salt_score": 0.5, "iou": 0.5, "image_iou": 0.5, "val_loss": 1.0}
    monkeypatch.setattr(engine_train, "evaluate", lambda *args, **kwargs: dict(flat))
    return _config(
        root,
        runs,
        stages=[{"name": "a", "loss": "bce", "epochs": 5}, {"name": "b", "loss": "bce", "epochs": 1}],
        train={"seed": 0, "device": "cpu", "early_stopping": patience, "max_steps_per_epoch": 1},
    )


def test_early_stopping_ends_a_stage_after_patience_epochs_without_improvement(
    tiny_salt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = train(_never_improving(tiny_salt, tmp_path, monkeypatch, patience=2))
    assert [row["stage"] for row in result.history] == ["1-a", "1-a", "1-a", "2-b"]


def test_resume_after_early_stopping_goes_on_with_the_next_stage(
    tiny_salt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _never_improving(tiny_salt, tmp_path, monkeypatch, patience=1)
    first = train(config, run_dir=tmp_path / "run", stop_after_epochs=2)  # stage a stops early after epoch 2
    assert [row["stage"] for row in first.history] == ["1-a", "1-a"] and not first.completed
    resumed = train(resume=tmp_path / "run")
    assert [row["stage"] for row in resumed.history] == ["1-a", "1-a", "2-b"] and resumed.completed


def test_bf16_channels_last_with_gradient_clipping_trains_on_cpu(tiny_salt: Path, tmp_path: Path) -> None:
    config = _config(
        tiny_salt,
        tmp_path,
        stages=[{"name": "bce", "loss": "bce", "epochs": 1, "lr": 0.01}],
        train={"seed": 0, "device": "cpu", "amp": "bf16", "channels_last": True, "grad_clip": 0.5},
    )
    result = train(config)
    row = result.history[0]
    assert 0.0 < float(row["train_loss"]) < 2.0 and 0.0 <= float(row["iou"]) <= 1.0
    weights = load_checkpoint(result.run_dir / "last.pt")["model"]
    assert weights["segmentation_head.0.weight"].dtype == torch.float32
    # Validation ran the run's own settings: eval of the same weights with them scores the same.
    quiet = Console(file=io.StringIO())
    evaluation = evaluate_run(result.run_dir / "last.pt", device="cpu", console=quiet)
    assert evaluation["iou"] == pytest.approx(float(row["iou"]), abs=1e-6)
    overridden = AccelerationOverride(amp="none", channels_last=False)
    plain = evaluate_run(result.run_dir / "last.pt", device="cpu", acceleration=overridden, console=quiet)
    assert plain["iou"] == pytest.approx(evaluation["iou"], abs=0.05)  # float32: close, not necessarily equal


def test_fp16_on_cpu_is_refused_before_the_run_folder_is_made(tiny_salt: Path, tmp_path: Path) -> None:
    config = _config(tiny_salt, tmp_path, train={"seed": 0, "device": "cpu", "amp": "fp16"})
    with pytest.raises(ConfigError, match=r"amp fp16 \(train\.amp or --amp\) needs a CUDA device, not cpu"):
        train(config)
    assert not (tmp_path / "tiny").exists()


def _float_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in state.items() if tensor.is_floating_point()}


def test_ema_is_validated_checkpointed_and_exported_and_the_trained_weights_are_kept(
    tiny_salt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decay = 0.6
    config = _config(
        tiny_salt, tmp_path, stages=[{"name": "bce", "loss": "bce", "epochs": 2, "lr": 0.02, "ema": decay}]
    )
    trained, scored = [], []  # the raw weights after every step; the weights each validation scored
    real_step, real_evaluate = engine_train.Trainer.training_step, engine_train.evaluate

    def recording_step(self, *args, **kwargs):
        loss = real_step(self, *args, **kwargs)
        trained.append({name: tensor.clone() for name, tensor in self.model.state_dict().items()})
        return loss

    def recording_evaluate(model, *args, **kwargs):
        scored.append({name: tensor.clone() for name, tensor in model.state_dict().items()})
        return real_evaluate(model, *args, **kwargs)

    monkeypatch.setattr(engine_train.Trainer, "training_step", recording_step)
    monkeypatch.setattr(engine_train, "evaluate", recording_evaluate)
    result = train(config)
    assert len(trained) == 4 and len(scored) == 2  # 2 epochs of 2 steps

    # By hand: the average starts at the first step's weights, then ema = decay * ema + (1 - decay) * w.
    expected = _float_weights(trained[0])
    for weights in trained[1:]:
        expected = {name: decay * ema + (1 - decay) * weights[name] for name, ema in expected.items()}
    last = load_checkpoint(result.run_dir / "last.pt")
    assert last["ema_n_averaged"] == 4
    assert all(torch.equal(last["train_model"][name], tensor) for name, tensor in trained[-1].items())
    assert all(torch.equal(last["model"][name], tensor) for name, tensor in scored[-1].items())  # validated = saved
    torch.testing.assert_close(_float_weights(last["model"]), expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(
        last["model"]["segmentation_head.0.weight"], last["train_model"]["segmentation_head.0.weight"]
    )

    # best.pt and the export hold the averaged weights of the epoch they scored.
    best = load_checkpoint(result.run_dir / "best.pt")
    best_epoch = best["epoch"]
    assert all(torch.equal(best["model"][name], tensor) for name, tensor in scored[best_epoch - 1].items())
    exported = load_model(result.run_dir).model.state_dict()
    assert all(torch.equal(exported[name], tensor) for name, tensor in best["model"].items())


def test_resume_with_ema_and_per_step_schedules_gives_the_same_weights_and_rows(
    tiny_salt: Path, tmp_path: Path
) -> None:
    stages = [
        {"name": "bce", "loss": "bce", "epochs": 2, "lr": 0.01, "ema": 0.9, "schedule": "poly", "by_epoch": False},
        {"name": "lovasz", "loss": "lovasz_hinge", "epochs": 2, "lr": 0.005, "ema": 0.8, "warmup_steps": 3},
    ]
    config = _config(tiny_salt, tmp_path, stages=stages)  # 2 stages of 2 epochs, 2 training steps each
    straight = train(config, run_dir=tmp_path / "straight")
    run = tmp_path / "interrupted"
    assert not train(config, run_dir=run, stop_after_epochs=1).completed  # in the middle of stage 1
    assert not train(resume=run, stop_after_epochs=2).completed  # in the middle of stage 2
    assert load_checkpoint(run / "last.pt")["ema_n_averaged"] == 2
    resumed = train(resume=run)
    assert resumed.completed
    final_a, final_b = load_checkpoint(straight.run_dir / "last.pt"), load_checkpoint(run / "last.pt")
    for key in ("model", "train_model"):
        assert all(torch.equal(final_a[key][name], final_b[key][name]) for name in final_a[key]), key
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]
    assert [r["iou"] for r in straight.history] == [r["iou"] for r in resumed.history]
    # summary.csv's lr is that of each epoch's first step: poly per step, then a warm-up times the cosine.
    poly = [0.01 * (1 - k / 4) ** 0.9 for k in (0, 2)]
    warm_cosine = [0.005 * (0.001 + 0.999 * min(k, 3) / 3) * (1 + math.cos(math.pi * (k // 2) / 2)) / 2 for k in (0, 2)]
    assert [float(r["lr"]) for r in resumed.history] == pytest.approx([*poly, *warm_cosine], rel=1e-5)


def _first_weights(config, run_dir: Path) -> dict[str, torch.Tensor]:
    """The weights a run starts from: its ``last.pt`` when stopped before the first epoch."""
    assert not train(config, run_dir=run_dir, stop_after_epochs=0).completed
    return load_checkpoint(run_dir / "last.pt")["model"]


def test_init_from_starts_every_run_from_the_sources_weights(tiny_salt: Path, tmp_path: Path) -> None:
    one_step = {"seed": 7, "device": "cpu", "max_steps_per_epoch": 1}
    source = train(
        _config(tiny_salt, tmp_path, stages=[{"name": "bce", "loss": "bce", "epochs": 1}], train=one_step),
        run_dir=tmp_path / "source",
    ).run_dir
    source_weights = load_model(source).model.state_dict()
    # encoder_weights name a file that does not exist: with init_from it is neither read nor needed.
    model = {"encoder_weights": str(tmp_path / "absent.pth"), "init_from": str(source)}
    starts = []
    for seed, init_from in ((0, source), (1, source), (2, source / "best.pt"), (3, source / "model.safetensors")):
        config = _config(tiny_salt, tmp_path, model=model | {"init_from": str(init_from)}, train={"seed": seed})
        starts.append(_first_weights(config, tmp_path / f"seed{seed}"))
    for start in starts:
        assert start.keys() == source_weights.keys()
        assert all(torch.equal(start[name], tensor) for name, tensor in source_weights.items())
    # Without init_from the seed picks the weights.
    seeded = _first_weights(_config(tiny_salt, tmp_path, train={"seed": 1}), tmp_path / "seeded")
    assert not torch.equal(seeded["segmentation_head.0.weight"], source_weights["segmentation_head.0.weight"])

    # A resumed run takes its checkpoint's weights, not init_from's: the source may be gone.
    resumable = _config(
        tiny_salt,
        tmp_path,
        model=model,
        stages=[{"name": "bce", "loss": "bce", "epochs": 1}],
        train=one_step,
    )
    _first_weights(resumable, tmp_path / "resumed")
    (source / "model.safetensors").rename(tmp_path / "moved.safetensors")
    (source / "best.pt").unlink()
    (source / "last.pt").unlink()
    assert train(resume=tmp_path / "resumed").completed


def test_a_bad_init_from_is_a_config_error_before_the_run_folder_is_made(tiny_salt: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "best.pt"
    with pytest.raises(ConfigError, match=r"model\.init_from '.*nowhere/best\.pt': no run folder or model file"):
        train(_config(tiny_salt, tmp_path, model={"init_from": str(missing)}))
    assert not (tmp_path / "tiny").exists()
    one_step = {"seed": 0, "device": "cpu", "max_steps_per_epoch": 1}
    source = train(
        _config(tiny_salt, tmp_path, stages=[{"name": "bce", "loss": "bce", "epochs": 1}], train=one_step),
        run_dir=tmp_path / "source",
    ).run_dir
    other = {
        "arch": "Unet",
        "encoder": "resnet18",
        "encoder_weights": None,
        "options": {"encoder_depth": 3, "decoder_channels": [16, 8, 4]},
        "init_from": str(source / "model.safetensors"),
    }
    message = (
        r"model\.init_from: the weights in .*source/model\.safetensors do not fit model\.arch 'Unet', "
        r"model\.encoder 'resnet18' and model\.options .*: "
        r"decoder\.blocks\.2\.conv1\.0\.weight: \(8, 8, 3, 3\) in the file, \(4, 8, 3, 3\) in the model"
    )
    with pytest.raises(ConfigError, match=message):
        train(_config(tiny_salt, tmp_path, model=other), run_dir=tmp_path / "mismatch")
    assert not (tmp_path / "mismatch").exists()


def test_init_from_a_plain_run_fine_tunes_into_a_model_with_added_heads(tiny_salt: Path, tmp_path: Path) -> None:
    one_step = {"seed": 0, "device": "cpu", "max_steps_per_epoch": 1}
    bce = [{"name": "bce", "loss": "bce", "epochs": 1}]
    source = train(_config(tiny_salt, tmp_path, stages=bce, train=one_step), run_dir=tmp_path / "source").run_dir
    source_weights = load_model(source).model.state_dict()
    heads = {"empty_head": 0.25, "deep_supervision": 0.5, "init_from": str(source)}
    start = _first_weights(_config(tiny_salt, tmp_path, model=heads, stages=bce, train=one_step), tmp_path / "heads")
    # Every weight of the plain run is where it was; the added heads are the only new ones, freshly seeded.
    assert all(torch.equal(start[name], tensor) for name, tensor in source_weights.items())
    added = sorted({name.split(".")[0] for name in start.keys() - source_weights.keys()})
    assert added == ["classification_head", "deep_heads"]
    unloaded = _config(tiny_salt, tmp_path, model=heads | {"init_from": None}, stages=bce, train=one_step)
    fresh = _first_weights(unloaded, tmp_path / "fresh")
    assert all(torch.equal(start[name], fresh[name]) for name in start if name.startswith(("classification", "deep")))
    # The other way round a head in the file has no place in the model: still an error.
    with pytest.raises(ConfigError, match=r"do not fit .*: unexpected classification_head\."):
        train(
            _config(tiny_salt, tmp_path, model={"init_from": str(tmp_path / "heads" / "last.pt")}),
            run_dir=tmp_path / "x",
        )


def test_an_empty_head_trains_validates_resumes_and_is_evaluated_with_its_gate(tiny_salt: Path, tmp_path: Path) -> None:
    stages = [
        {"name": "bce", "loss": "bce", "epochs": 1, "lr": 0.01},
        {"name": "lovasz", "loss": "lovasz_hinge", "epochs": 1, "lr": 0.005, "empty_images": "skip"},
    ]
    config = _config(tiny_salt, tmp_path, stages=stages)
    config.model.empty_head = 0.5
    gates = []  # of every validation: the stage that skips empty images is scored with the head's gate

    class RecordingScorer(Scorer):
        def __init__(self, *args, empty_gate: float = 0.0, **kwargs) -> None:
            gates.append(empty_gate)
            super().__init__(*args, empty_gate=empty_gate, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine_train, "Scorer", RecordingScorer)
        straight = train(config, run_dir=tmp_path / "straight")
    assert gates == [0.0, 0.5]
    assert straight.completed and 0.0 <= straight.best_metrics["empty_head_accuracy"] <= 1.0
    stopped = train(config, run_dir=tmp_path / "resumed", stop_after_epochs=1)
    assert not stopped.completed
    resumed = train(resume=tmp_path / "resumed")
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]
    weights, again = (
        load_model(run / "model.safetensors").model.state_dict() for run in (straight.run_dir, resumed.run_dir)
    )
    assert "classification_head.3.weight" in weights
    assert all(torch.equal(weights[name], again[name]) for name in weights)
    result = evaluate_run(straight.run_dir, console=Console(file=io.StringIO()))
    assert result["salt_score_postprocessed"] >= result["salt_score_postprocessed_without_empty_gate"]
    assert "postprocess_empty_gate" in result and "empty_head_accuracy" in result


def test_an_empty_head_on_a_multi_class_task_is_a_config_error(tiny_voc: Path, tmp_path: Path) -> None:
    config = _config(tiny_voc, tmp_path, data={"name": "voc", "root": str(tiny_voc), "options": {}})
    config.model.empty_head = 0.25
    with pytest.raises(ConfigError, match=r"model\.empty_head 0\.25 needs a binary task"):
        train(config, run_dir=tmp_path / "voc")
    assert not (tmp_path / "voc").exists()


def _parameter_names(run: Path) -> list[str]:
    return [name for name, _ in load_model(run).model.named_parameters()]


def _batch_norm_buffers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in state.items() if name.endswith(("running_mean", "running_var"))}


@pytest.mark.parametrize(
    ("stage", "averaged_epochs"),
    [
        ({"epochs": 3, "swa_epochs": 2}, [2, 3]),
        ({"epochs": 4, "swa_epochs": 2, "schedule": "cosine_restarts", "cycles": 2}, [2, 4]),  # the snapshots
    ],
)
def test_swa_averages_the_window_recomputes_batch_norm_and_is_a_model_file(
    tiny_salt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: dict, averaged_epochs: list[int]
) -> None:
    config = _config(tiny_salt, tmp_path, stages=[{"name": "bce", "loss": "bce", "lr": 0.02, **stage}])
    trained, seen = [], []  # the weights at every epoch's end; the images BatchNorm statistics were recomputed on
    real_epoch, real_recompute = engine_train.Trainer.train_epoch, engine_train.recompute_batch_norm

    def recording_epoch(self, *args, **kwargs):
        loss = real_epoch(self, *args, **kwargs)
        trained.append({name: tensor.clone() for name, tensor in self.model.state_dict().items()})
        return loss

    def recording_recompute(model, batches, forward=None):
        seen.extend(batches)
        return real_recompute(model, iter(seen), forward)

    monkeypatch.setattr(engine_train.Trainer, "train_epoch", recording_epoch)
    monkeypatch.setattr(engine_train, "recompute_batch_norm", recording_recompute)
    result = train(config)
    run = result.run_dir
    swa = load_checkpoint(run / "stage1_swa.pt")
    assert swa["swa_n_averaged"] == len(averaged_epochs) and len(seen) == 2  # one epoch's 2 batches

    # The parameters: the equal mean of the window's epochs, by hand (before any BatchNorm update).
    window = [trained[epoch - 1] for epoch in averaged_epochs]
    names = _parameter_names(run)
    for name in names:
        expected = sum(weights[name] for weights in window) / len(window)
        torch.testing.assert_close(swa["model"][name], expected, rtol=0, atol=1e-6, msg=name)
    if stage.get("schedule") == "cosine_restarts":  # the snapshot files hold the same weights
        for cycle, epoch in enumerate(averaged_epochs, start=1):
            snapshot = load_checkpoint(run / f"stage1_snapshot{cycle}.pt")["model"]
            assert all(torch.equal(snapshot[name], trained[epoch - 1][name]) for name in names)

    # BatchNorm statistics: recomputed on the training images, not the running ones averaged or kept.
    reference = load_model(run / "stage1_swa.pt").model
    update_bn(seen, reference)
    recomputed = _batch_norm_buffers(swa["model"])
    torch.testing.assert_close(recomputed, _batch_norm_buffers(reference.state_dict()), rtol=0, atol=1e-6)
    running = {name: sum(w[name] for w in window) / len(window) for name in recomputed}
    assert max(float((recomputed[name] - running[name]).abs().max()) for name in recomputed) > 1e-3
    assert max(float((recomputed[n] - trained[-1][n]).abs().max()) for n in recomputed) > 1e-3

    # Validated like an epoch: a row 'swa' after the stage's epochs, and scored again by eval as a model file.
    epochs = [str(epoch) for epoch in range(1, stage["epochs"] + 1)]
    assert [row["epoch"] for row in result.history] == [*epochs, "swa"]
    assert float(result.history[-1]["salt_score"]) == pytest.approx(swa["metrics"]["salt_score"], abs=1e-6)
    evaluation = evaluate_run(run / "stage1_swa.pt", device="cpu", console=Console(file=io.StringIO()))
    assert evaluation["salt_score"] == pytest.approx(swa["metrics"]["salt_score"], abs=1e-6)
    last = load_checkpoint(run / "last.pt")
    assert last["swa_done"] and last["swa_n_averaged"] == len(averaged_epochs)
    assert all(torch.equal(last["model"][name], trained[-1][name]) for name in names)  # the trained weights


@pytest.mark.parametrize(("scores", "swa_best"), [([0.1, 0.2, 0.9], True), ([0.1, 0.5, 0.3], False)])
def test_the_swa_average_is_chosen_as_best_when_its_metric_is_better(
    tiny_salt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scores: list[float], swa_best: bool
) -> None:
    stages = [{"name": "bce", "loss": "bce", "epochs": 2, "lr": 0.02, "swa_epochs": 2}]
    calls, real_evaluate = iter(scores), engine_train.evaluate  # two epochs, then the average

    def scored(*args, **kwargs):
        return real_evaluate(*args, **kwargs) | {"salt_score": next(calls)}

    monkeypatch.setattr(engine_train, "evaluate", scored)
    result = train(_config(tiny_salt, tmp_path, stages=stages))
    run = result.run_dir
    best, swa = load_checkpoint(run / "best.pt"), load_checkpoint(run / "stage1_swa.pt")
    assert result.best_metrics["salt_score"] == max(scores)
    chosen = swa["model"] if swa_best else load_checkpoint(run / "stage1_best.pt")["model"]
    assert ("swa_model" not in best) is swa_best and best["epoch"] == 2  # the average's file has no average to build
    exported = load_model(run / "model.safetensors").model.state_dict()
    for name, tensor in chosen.items():
        assert torch.equal(best["model"][name], tensor) and torch.equal(exported[name], tensor), name
    assert torch.equal(
        load_checkpoint(run / "stage1_best.pt")["model"]["segmentation_head.0.weight"],
        best["model"]["segmentation_head.0.weight"],
    )


def test_resume_continues_the_swa_average_exactly(
    tiny_salt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stages = [
        {"name": "bce", "loss": "bce", "epochs": 3, "lr": 0.01, "swa_epochs": 2},
        {
            "name": "lovasz",
            "loss": "lovasz_hinge",
            "epochs": 2,
            "lr": 0.005,
            "schedule": "cosine_restarts",
            "cycles": 2,
            "swa_epochs": 2,
        },
    ]
    config = _config(tiny_salt, tmp_path, stages=stages)
    straight = train(config, run_dir=tmp_path / "straight")
    run = tmp_path / "interrupted"
    assert not train(config, run_dir=run, stop_after_epochs=2).completed  # inside stage 1's window
    assert load_checkpoint(run / "last.pt")["swa_n_averaged"] == 1

    def crash(*args, **kwargs):  # killed between stage 1's last epoch and its average
        raise RuntimeError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(engine_train.Trainer, "_end_swa", crash)
        with pytest.raises(RuntimeError, match="killed"):
            train(resume=run)
    last = load_checkpoint(run / "last.pt")
    assert (last["stage"], last["epoch"], last["stage_done"], last["swa_done"]) == (0, 3, True, False)
    assert not (run / "stage1_swa.pt").exists()
    assert not train(resume=run, stop_after_epochs=1).completed  # the average, then inside stage 2
    assert load_checkpoint(run / "last.pt")["swa_n_averaged"] == 1
    resumed = train(resume=run)
    assert resumed.completed
    for name in ("stage1_swa.pt", "stage2_swa.pt", "last.pt", "best.pt"):
        ours, theirs = load_checkpoint(run / name)["model"], load_checkpoint(straight.run_dir / name)["model"]
        for key, tensor in theirs.items():
            torch.testing.assert_close(ours[key], tensor, rtol=0, atol=1e-6, msg=f"{name} {key}")
    assert [r["epoch"] for r in resumed.history] == ["1", "2", "3", "swa", "1", "2", "swa"]
    for column in ("train_loss", "iou", "salt_score"):
        assert [r[column] for r in straight.history] == [r[column] for r in resumed.history], column


def test_the_winners_model_trains_resumes_averages_and_evaluates(tiny_salt: Path, tmp_path: Path) -> None:
    """Empty head, deep supervision, hypercolumn and scSE together, SWA over the Lovász stage."""
    stages = [
        {"name": "bce", "loss": "bce", "epochs": 1, "lr": 0.01},
        {"name": "lovasz", "loss": "lovasz_hinge", "epochs": 2, "lr": 0.005, "empty_images": "skip", "swa_epochs": 2},
    ]
    model = {
        "encoder": "resnet18",
        "encoder_weights": None,
        "options": {"encoder_depth": 3, "decoder_channels": [32, 16, 16], "decoder_attention_type": "scse"},
        "empty_head": 0.25,
        "deep_supervision": 0.5,
        "hypercolumn": True,
    }
    config = _config(tiny_salt, tmp_path, stages=stages, model=model)
    straight = train(config, run_dir=tmp_path / "straight")
    assert [r["epoch"] for r in straight.history] == ["1", "1", "2", "swa"]
    stopped = train(config, run_dir=tmp_path / "resumed", stop_after_epochs=2)
    assert not stopped.completed
    resumed = train(resume=tmp_path / "resumed")
    for column in ("train_loss", "val_loss", "salt_score"):
        assert [r[column] for r in resumed.history] == [r[column] for r in straight.history], column
    swa = load_model(straight.run_dir / "stage2_swa.pt").model
    assert any(name.startswith("deep_heads.") for name in swa.state_dict())
    result = evaluate_run(straight.run_dir, console=Console(file=io.StringIO()))
    assert "postprocess_empty_gate" in result and 0.0 <= result["salt_score"] <= 1.0
    # Deep supervision only adds loss terms: the same first step without it has a smaller loss.
    config.model.deep_supervision = 0.0
    config.stages = config.stages[:1]
    plain = train(config, run_dir=tmp_path / "without-deep")
    assert float(plain.history[0]["train_loss"]) < float(straight.history[0]["train_loss"])
