"""The loss comparison: one run per entry with the same budget, a CSV, a table and a plot."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ACCELERATION_CASES, tiny_salt_config, write_config
from rich.console import Console
from typer.testing import CliRunner

import lovaszseg.workflows.compare
from lovaszseg.cli import app
from lovaszseg.config import Config, load_config
from lovaszseg.errors import ConfigError
from lovaszseg.storage.run_folder import RunFolder, read_weights
from lovaszseg.training.trainer import RunResult, Trainer, train
from lovaszseg.workflows.compare import (
    Entry,
    compare,
    comparison_tables,
    load_comparison,
    parse_entry,
    read_entry,
    summarise,
)


@pytest.mark.parametrize(
    ("entry", "spec"),
    [
        ("bce", [("bce", {})]),
        ("bce>lovasz_hinge", [("bce", {}), ("lovasz_hinge", {})]),
        (
            "lovasz_hinge(variant=elu+1, per_image=false)",
            [({"lovasz_hinge": {"variant": "elu+1", "per_image": False}}, {})],
        ),
        (
            "bce>lovasz_hinge(variant=elu+1, lr=0.0005, optimizer=sgd)",
            [("bce", {}), ({"lovasz_hinge": {"variant": "elu+1"}}, {"lr": 0.0005, "optimizer": "sgd"})],
        ),
        ("lovasz_hinge(lr=0.0001)", [("lovasz_hinge", {"lr": 0.0001})]),
    ],
)
def test_parse_entry(entry: str, spec: list) -> None:
    assert parse_entry(entry) == spec


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("lovasz_hinge(elu)", "loss 'lovasz_hinge(elu)': 'elu' is not option=value"),
        ("Lovasz-Hinge", "cannot read loss 'Lovasz-Hinge'; write NAME or NAME(option=value, ...)"),
        ("bce>", "cannot read loss ''"),
    ],
)
def test_parse_entry_errors(entry: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_entry(entry)
    assert str(caught.value) == message or str(caught.value).startswith(message)


def test_compare_cli_on_tiny_salt(tiny_salt: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_salt_config(tiny_salt, tmp_path / "runs"))
    result = CliRunner().invoke(
        app,
        [
            "compare",
            str(config),
            "--losses",
            "bce,lovasz_hinge(variant=elu+1),bce>lovasz_hinge(lr=0.002;optimizer=sgd)",
            "--epochs",
            "2",
            "--out-dir",
            str(tmp_path / "cmp"),
        ],
    )
    assert result.exit_code == 0, result.output
    with (tmp_path / "cmp" / "compare.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    schedule = "bce>lovasz_hinge(lr=0.002,optimizer=sgd)"
    assert [row["loss"] for row in rows] == ["bce", "lovasz_hinge(variant=elu+1)", schedule]
    assert all(0 <= float(row["salt_score"]) <= 1 and row["epochs"] == "2" for row in rows)
    assert (tmp_path / "cmp" / "compare.png").is_file()
    run = tmp_path / "cmp" / "bce-then-lovasz_hinge_lr_0.002_optimizer_sgd"
    summary = (run / "summary.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in summary[1:]] == ["1-1", "2-2"]
    stages = load_config(run / "config.yaml").stages  # the second stage has its own settings, the first the base's
    assert [(s.loss, s.lr, s.optimizer) for s in stages] == [("bce", 0.01, "adam"), ("lovasz_hinge", 0.002, "sgd")]
    for row, name in zip(rows, ["bce", "lovasz_hinge_variant_elu+1", run.name], strict=True):
        folder = tmp_path / "cmp" / name
        # A finished run folder: one saved config, the exported model, and the eval.json its row comes from.
        assert RunFolder(folder).finished and not (folder / "config.json").exists()
        scored = json.loads((folder / "eval.json").read_text())
        assert scored["model"] == str(folder / "model.safetensors")
        for metric in ("salt_score", "iou", "image_iou", "best_threshold", "salt_score_at_best_threshold"):
            assert float(row[metric]) == round(scored[metric], 6), (name, metric)


def test_compare_rejects_a_bad_entry_before_training(tiny_salt: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_salt_config(tiny_salt, tmp_path / "runs"))
    result = CliRunner().invoke(
        app, ["compare", str(config), "--losses", "bce,lovasz", "--out-dir", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "unknown loss 'lovasz'" in result.output
    assert not (tmp_path / "x").exists()
    result = CliRunner().invoke(
        app, ["compare", str(config), "--losses", "bce>lovasz_hinge(lr=-1)", "--out-dir", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "lr" in result.output and "greater than 0" in result.output
    assert not (tmp_path / "x").exists()


def test_compare_on_cuda_without_a_gpu_is_an_error_line(
    tiny_salt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = write_config(tmp_path / "c.yaml", tiny_salt_config(tiny_salt, tmp_path / "runs"))
    result = CliRunner().invoke(
        app, ["compare", str(config), "train.device=cuda", "--losses", "bce", "--out-dir", str(tmp_path / "x")]
    )
    assert result.exit_code == 2, result.output
    message = "error: device 'cuda' asked for, but no CUDA GPU is available here; use cpu or auto\n"
    assert result.output.endswith(message) and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


def test_compare_refuses_a_run_folder_another_process_writes(tiny_salt: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_salt_config(tiny_salt, tmp_path / "runs"))
    held = RunFolder(tmp_path / "cmp" / "bce")
    held.lock()  # as a training of that folder would: compare must neither wait nor overwrite it
    (held.path / "last.pt").write_bytes(b"another run's checkpoint")
    try:
        result = CliRunner().invoke(
            app, ["compare", str(config), "--losses", "bce", "--epochs", "1", "--out-dir", str(tmp_path / "cmp")]
        )
    finally:
        held.release()
    assert result.exit_code == 2, result.output
    assert f"is being written by another process (PID {os.getpid()})" in " ".join(result.output.split())
    assert (held.path / "last.pt").read_bytes() == b"another run's checkpoint"
    assert not (tmp_path / "cmp" / "compare.csv").exists()


def test_compare_again_rescores_finished_runs_and_retrains_changed_ones(
    tiny_salt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(tiny_salt_config(tiny_salt, tmp_path / "runs"))
    first = compare(config, ["bce"], epochs=1, out_dir=tmp_path / "cmp")
    real_train, seeds_trained = lovaszseg.workflows.compare.train, []

    def recording_train(entry_config: Config, **kwargs: Any) -> Any:
        seeds_trained.append(entry_config.train.seed)
        return real_train(entry_config, **kwargs)

    monkeypatch.setattr(lovaszseg.workflows.compare, "train", recording_train)
    again = compare(config, ["bce"], epochs=1, out_dir=tmp_path / "cmp")
    assert seeds_trained == [] and again.rows == first.rows  # the same best checkpoint, evaluated again
    compare(config, ["bce"], epochs=1, out_dir=tmp_path / "cmp", retrain=True)
    changed = load_config(tiny_salt_config(tiny_salt, tmp_path / "runs", train={"seed": 1, "device": "cpu"}))
    compare(changed, ["bce"], epochs=1, out_dir=tmp_path / "cmp")
    assert seeds_trained == [0, 1]


@pytest.mark.parametrize(
    ("entry", "spec"),
    [
        ("bce+lovasz_hinge", [({"bce": None, "lovasz_hinge": None}, {})]),
        (
            "bce+lovasz_hinge(variant=elu+1, ema=0.99)",
            [({"bce": None, "lovasz_hinge": {"variant": "elu+1"}}, {"ema": 0.99})],
        ),
        (
            "bce>lovasz_hinge(warmup_steps=50, by_epoch=false, schedule=poly)",
            [("bce", {}), ("lovasz_hinge", {"warmup_steps": 50, "by_epoch": False, "schedule": "poly"})],
        ),
    ],
)
def test_parse_entry_sums_and_new_stage_options(entry: str, spec: list) -> None:
    assert parse_entry(entry) == spec


def test_compare_with_seeds_gives_intervals_and_paired_differences(tiny_salt: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_salt_config(tiny_salt, tmp_path / "runs"))
    out = tmp_path / "cmp"
    arguments = ["compare", str(config), "--losses", "bce,lovasz_hinge", "--epochs", "1", "--out-dir", str(out)]
    result = CliRunner().invoke(app, [*arguments, "--seeds", "0,1", "--baseline", "lovasz_hinge"])
    assert result.exit_code == 0, result.output
    assert "difference to lovasz_hinge" in " ".join(result.output.split())
    with (out / "compare.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["loss"], row["seed"]) for row in rows] == [
        ("bce", "0"),
        ("bce", "1"),
        ("lovasz_hinge", "0"),
        ("lovasz_hinge", "1"),
    ]
    assert all((out / row["loss"] / f"seed-{row['seed']}" / "image-statistics.npz").is_file() for row in rows)
    with (out / "compare-summary.csv").open() as handle:
        summary = {line["loss"]: line for line in csv.DictReader(handle)}
    scores = [float(row["salt_score"]) for row in rows if row["loss"] == "bce"]
    bce = summary["bce"]
    assert float(bce["salt_score"]) == pytest.approx(sum(scores) / 2, abs=1e-6)
    assert float(bce["salt_score_low"]) <= float(bce["salt_score"]) <= float(bce["salt_score_high"])
    # The baseline has no difference to itself; the other entry's estimate is the mean per-seed difference.
    assert "salt_score_diff" not in summary["lovasz_hinge"] or summary["lovasz_hinge"]["salt_score_diff"] == ""
    others = [float(row["salt_score"]) for row in rows if row["loss"] == "lovasz_hinge"]
    expected = sum(a - b for a, b in zip(scores, others, strict=True)) / 2
    assert float(bce["salt_score_diff"]) == pytest.approx(expected, abs=2e-6)
    assert float(bce["salt_score_diff_low"]) <= float(bce["salt_score_diff"]) <= float(bce["salt_score_diff_high"])
    assert (out / "compare.png").is_file()
    # The saved per-image statistics give the same summary again, here against the other baseline.
    rows_again, statistics = load_comparison(out)
    assert [row["salt_score"] for row in rows_again] == [float(row["salt_score"]) for row in rows]
    again = {line["loss"]: line for line in summarise(rows_again, statistics, "bce")}
    assert again["lovasz_hinge"]["salt_score_diff"] == pytest.approx(-float(bce["salt_score_diff"]), abs=2e-6)
    for bad, message in ((["--seeds", "0,x"], "--seeds must be"), (["--baseline", "jaccard"], "baseline 'jaccard'")):
        result = CliRunner().invoke(app, [*arguments, *bad])
        assert result.exit_code == 2 and message in result.output, result.output


def test_compare_from_starts_every_entry_and_seed_from_the_same_weights(
    tiny_salt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stages = [{"name": "bce", "loss": "bce", "epochs": 1, "lr": 0.01}]
    config = load_config(tiny_salt_config(tiny_salt, tmp_path / "runs", stages=stages))
    source = train(config, run_dir=tmp_path / "source").run_dir
    starts: list[dict[str, torch.Tensor]] = []
    real_fit = Trainer.fit

    def recording_fit(self: Trainer, folder: RunFolder, **kwargs: Any) -> Any:
        starts.append({name: value.clone() for name, value in self.model.state_dict().items()})
        return real_fit(self, folder, **kwargs)

    monkeypatch.setattr(Trainer, "fit", recording_fit)
    result = compare(
        config, ["bce", "lovasz_hinge(lr=0.001)"], epochs=1, seeds=[3, 4], init_from=source, out_dir=tmp_path / "cmp"
    )
    expected, _ = read_weights(source)
    assert len(starts) == 4 and len(result.rows) == 4
    for start in starts:
        assert start.keys() == expected.keys()
        assert all(torch.equal(start[name], expected[name]) for name in expected)
    # The seed still matters: it changes the data order, so the two continuations of one entry differ.
    ends = [read_weights(tmp_path / "cmp" / "bce" / f"seed-{seed}")[0] for seed in (3, 4)]
    assert any(not torch.equal(ends[0][name], ends[1][name]) for name in ends[0])
    with pytest.raises(ConfigError, match="no such run folder or checkpoint"):
        compare(config, ["bce"], epochs=1, init_from=tmp_path / "missing", out_dir=tmp_path / "x")


def _summary_line(loss: str, mean: float, difference: tuple[float, float, float] | None) -> dict[str, Any]:
    line: dict[str, Any] = {"loss": loss, "seeds": 3}
    for name in ("salt_score", "iou", "image_iou"):
        line |= {name: mean, f"{name}_low": mean - 0.01, f"{name}_high": mean + 0.01}
        if difference is not None:
            line |= dict(zip((f"{name}_diff", f"{name}_diff_low", f"{name}_diff_high"), difference, strict=True))
    return line


def _render(summary: list[dict[str, Any]], width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    for table in comparison_tables(summary, "bce"):
        console.print(table)
    return console.export_text()


def test_comparison_tables_mark_noise_and_keep_every_digit_in_80_columns() -> None:
    long_entry = "bce>lovasz_hinge(variant=elu+1,symmetric=true,lr=0.001)"
    summary = [
        _summary_line("bce", 0.5425, None),
        _summary_line(long_entry, 0.5954, (0.0529, -0.0088, 0.1200)),  # interval includes 0: noise
        _summary_line("lovasz_hinge", 0.6312, (0.0887, 0.0123, 0.1651)),  # above 0: real
    ]
    wide = " ".join(_render(summary, 200).split())
    assert wide.count("+0.0529 [-0.0088, +0.1200] noise") == 3  # the noisy entry, every metric
    assert wide.count("+0.0887 [+0.0123, +0.1651]") == 3 and "+0.1651] noise" not in wide
    assert wide.count("0.5425 [0.5325, 0.5525]") == 3
    # A log file or a narrow terminal: cells fold instead of being cut, so the entry is still readable.
    narrow = _render(summary, 80)
    assert "…" not in narrow
    first_column = "".join(line.split("│")[1].strip() for line in narrow.splitlines() if line.startswith("│"))
    assert first_column.count(long_entry) == 2  # in the means and in the differences


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("bce", Entry("bce", "bce", {})),
        (
            "bce>lovasz_hinge(lr=0.001, model.options.decoder_attention_type=scse)",
            Entry(
                "bce>lovasz_hinge(lr=0.001, model.options.decoder_attention_type=scse)",
                "bce>lovasz_hinge(lr=0.001, model.options.decoder_attention_type=scse)",
                {"options.decoder_attention_type": "scse"},
            ),
        ),
        (
            "bce(model.options.decoder_channels=[16, 8, 4])",
            Entry(
                "bce(model.options.decoder_channels=[16, 8, 4])",
                "bce(model.options.decoder_channels=[16, 8, 4])",
                {"options.decoder_channels": [16, 8, 4]},
            ),
        ),
        (
            {"name": "bce-scse", "loss": "bce", "model": {"options": {"decoder_attention_type": "scse"}}},
            Entry("bce-scse", "bce", {"options.decoder_attention_type": "scse"}),
        ),
        (
            {"loss": "bce", "model": {"options.decoder_attention_type": "scse", "encoder": "resnet34"}},
            Entry("bce", "bce", {"options.decoder_attention_type": "scse", "encoder": "resnet34"}),
        ),
    ],
)
def test_read_entry_takes_model_keys_from_strings_and_mappings(entry: Any, expected: Entry) -> None:
    assert read_entry(entry) == expected


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"name": "head", "loss": "bce", "model": {"empty_hed": 0.25}},
            "compare entry 'head': unknown model key 'empty_hed'; allowed: arch, encoder",
        ),
        ("bce(model.encodr=resnet18)", "compare entry 'bce(model.encodr=resnet18)': unknown model key 'encodr'"),
        ({"name": "x", "loss": "bce", "modle": {}}, "compare entry 'x': unknown key(s) ['modle']; allowed: name, loss"),
        ({"name": "x", "model": {"arch": "FPN"}}, "compare entry 'x': give its loss as a string"),
        ({"loss": "bce", "model": "scse"}, "compare entry 'bce': model must be a mapping of model keys"),
    ],
)
def test_read_entry_errors_name_the_entry_and_key(entry: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        read_entry(entry)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (["bce", "bce(model.options.decoder_atention_type=scse)"], r"compare entry 'bce\(model.*decoder_atention_type"),
        (
            [{"name": "a", "loss": "bce", "model": {"encoder_weights.x": 1}}],
            r"compare entry 'a': model key .*is a value",
        ),
        ([{"name": "a", "loss": "bce", "model": {"encoder_depth": "x"}}], r"compare entry 'a': unknown model key"),
        (
            [{"name": "a", "loss": "bce", "model": {"arch": 3}}],
            r"(?s)compare entry 'a': invalid configuration .*model\.arch",
        ),
        (["bce", {"name": "bce", "loss": "jaccard"}], r"compare entries \['bce', 'bce'\] repeat a name"),
    ],
)
def test_compare_refuses_bad_model_keys_before_training(
    tiny_salt: Path, tmp_path: Path, entries: list, message: str
) -> None:
    config = load_config(tiny_salt_config(tiny_salt, tmp_path / "runs"))
    with pytest.raises(ConfigError, match=message):
        compare(config, entries, epochs=1, out_dir=tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _leaves(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def _differing(first: dict[str, Any], second: dict[str, Any]) -> set[str]:
    return {key for key in first.keys() | second.keys() if first.get(key, KeyError) != second.get(key, KeyError)}


def test_entries_that_differ_in_a_model_key_give_runs_whose_configs_differ_in_that_key_only(
    tiny_salt: Path, tmp_path: Path
) -> None:
    # scSE squeezes channels by 16: the tiny decoder's 8 channels would leave none.
    model = {"options": {"encoder_depth": 3, "decoder_channels": [32, 16, 16]}}
    config = load_config(tiny_salt_config(tiny_salt, tmp_path / "runs", model=model, train={"max_steps_per_epoch": 1}))
    entries = [
        "bce",
        {"name": "bce-scse", "loss": "bce", "model": {"options": {"decoder_attention_type": "scse"}}},
        "bce(model.options.decoder_channels=[16, 8, 4])",
    ]
    result = compare(config, entries, epochs=1, seeds=[0, 1], out_dir=tmp_path / "cmp")
    assert [row["loss"] for row in result.rows] == [name for name in ("bce", "bce-scse", entries[2]) for _ in (0, 1)]
    assert [line["loss"] for line in result.summary] == ["bce", "bce-scse", entries[2]]
    assert "salt_score_diff" in result.summary[1]  # paired with the baseline, as losses are
    folders = [
        tmp_path / "cmp" / name / "seed-0" for name in ("bce", "bce-scse", "bce_model.options.decoder_channels_16_8_4")
    ]
    base, scse, channels = (_leaves(RunFolder(folder).config().model_dump()) for folder in folders)
    assert _differing(base, scse) == {"model.options.decoder_attention_type"}
    assert scse["model.options.decoder_attention_type"] == "scse"
    assert _differing(base, channels) == {"model.options.decoder_channels"}
    assert channels["model.options.decoder_channels"] == [16, 8, 4]
    scse_weights, _ = read_weights(folders[1])
    assert any("attention" in name for name in scse_weights)  # smp built its scSE blocks


@pytest.mark.parametrize(("options", "expected"), ACCELERATION_CASES)
def test_compare_acceleration_options_set_the_config_of_every_run(
    options: list[str],
    expected: tuple[str, bool, bool],
    tiny_salt: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--amp, --channels-last and --compile set train.amp, .channels_last and .compile of every entry's
    run, so it trains, validates and is evaluated with them. Nothing trains here: each run's config is
    taken and the comparison stops as if interrupted."""
    train_keys = {"seed": 0, "device": "cpu", "amp": "auto", "compile": True}
    config = write_config(tmp_path / "c.yaml", tiny_salt_config(tiny_salt, tmp_path / "runs", train=train_keys))
    given: list[Config] = []

    def taking_the_config(entry_config: Config, **kwargs: Any) -> RunResult:
        given.append(entry_config)
        return RunResult(kwargs["run_dir"], {}, completed=False)

    monkeypatch.setattr(lovaszseg.workflows.compare, "train", taking_the_config)
    arguments = ["compare", str(config), "train.amp=none", "--losses", "bce", "--out-dir", str(tmp_path / "cmp")]
    result = CliRunner().invoke(app, [*arguments, *options])
    assert result.exit_code == 0, result.output
    assert [(c.train.amp, c.train.channels_last, c.train.compile) for c in given] == [expected]
    unknown = CliRunner().invoke(app, ["compare", str(config), "--amp", "half"])
    assert unknown.exit_code == 2 and "unknown --amp 'half'" in unknown.output
