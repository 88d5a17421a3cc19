"""The comparison experiment: the same data, seeds and epoch budget, once per loss (or model) entry.

``compare(config, ["bce", "lovasz_hinge", "bce>lovasz_hinge"], epochs=10, seeds=[0, 1, 2])`` trains
one run per entry and seed under ``out/``, evaluates each best checkpoint on the same validation split
and writes ``compare.csv`` (a row per run), ``compare-summary.csv`` (per entry: the mean and 95%
interval over seeds of every metric, and the paired bootstrap difference to the baseline entry, see
:mod:`lovaszseg.scoring.evidence`) and ``compare.png``. ``init_from`` starts every entry from the same weights
(e.g. a converged BCE run), so that "continue with BCE" and "continue with Lovász" are compared from
one point. An entry may also set model keys (``bce(model.options.decoder_attention_type=scse)``, or a
mapping ``{name: bce-scse, loss: bce, model: {options: {decoder_attention_type: scse}}}``), so that
architectures are compared as losses are.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from lovaszseg.config import Config, ModelConfig, StageConfig, load_config
from lovaszseg.data.io import atomic_write, read_csv_rows
from lovaszseg.errors import ConfigError
from lovaszseg.models import build_model
from lovaszseg.runtime.acceleration import AccelerationOverride
from lovaszseg.scoring.catalogue import BINARY_METRICS, MULTICLASS_METRICS, at_best_threshold_key, metric_names
from lovaszseg.scoring.evidence import (
    CONFIDENCE,
    ImageRecorder,
    ImageStatistics,
    Interval,
    mean_interval,
    paired_bootstrap,
)
from lovaszseg.storage.run_folder import RunFolder
from lovaszseg.training import resolve_config, train
from lovaszseg.workflows.runs import evaluate_run

__all__ = [
    "COMPARE_FILE",
    "IMAGE_STATISTICS_FILE",
    "MODEL_PREFIX",
    "STAGE_OPTIONS",
    "SUMMARY_FILE",
    "CompareResult",
    "Entry",
    "compare",
    "comparison_tables",
    "load_comparison",
    "parse_entry",
    "read_entry",
    "summarise",
    "write_rows_csv",
]

COMPARE_FILE = "compare.csv"
SUMMARY_FILE = "compare-summary.csv"
# Each run's per-image sums on the validation split, kept beside it: the paired intervals can be
# recomputed from them without the models.
IMAGE_STATISTICS_FILE = "image-statistics.npz"
# Final metrics drawn and summarised side by side: binary ones at 0.5 and at their best threshold, then
# multi-class ones.
_BAR_METRICS = (
    *(key for metric in BINARY_METRICS for key in (metric, at_best_threshold_key(metric))),
    *MULTICLASS_METRICS,
)
_TERM = re.compile(r"^\s*([a-z_]+)\s*(?:\((.*)\))?\s*$")
# Options of a term that set its stage rather than its loss, e.g. ``bce>lovasz_hinge(lr=0.0005, ema=0.999)``.
STAGE_OPTIONS = frozenset(StageConfig.model_fields) - {"name", "loss", "epochs"}
# Options of a term that set the entry's model (every stage's), e.g. ``bce(model.options.decoder_attention_type=scse)``.
MODEL_PREFIX = "model."
# The keys of a mapping entry.
_ENTRY_KEYS = ("name", "loss", "model")


def _parse_term(text: str) -> tuple[Any, dict[str, Any]]:
    """``lovasz_hinge(variant=elu+1, lr=0.0005)`` -> the loss spec and the stage's own settings."""
    match = _TERM.match(text)
    if match is None:
        raise ConfigError(f"cannot read loss {text!r}; write NAME or NAME(option=value, ...)")
    name, arguments = match.groups()
    options, settings = {}, {}
    for pair in _split_outside_parentheses(arguments, ",") if arguments else []:
        key, sep, value = (part.strip() for part in pair.partition("="))
        if not sep:
            raise ConfigError(f"loss {text!r}: {pair!r} is not option=value")
        own = key in STAGE_OPTIONS or key.startswith(MODEL_PREFIX)
        (settings if own else options)[key] = yaml.safe_load(value)
    return ({name: options} if options else name), settings


def _split_outside_parentheses(text: str, separator: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for character in text:  # brackets too: a YAML list or mapping value keeps its commas
        depth += {"(": 1, ")": -1, "[": 1, "]": -1, "{": 1, "}": -1}.get(character, 0)
        if character == separator and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += character
    return [*parts, current]


def _parse_stage(text: str) -> tuple[Any, dict[str, Any]]:
    """One stage: a loss, or a sum of losses ``bce+lovasz_hinge(variant=elu+1)`` (weight 1 each)."""
    terms = [_parse_term(part) for part in _split_outside_parentheses(text, "+")]
    if len(terms) == 1:
        return terms[0]
    losses: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    for loss, own in terms:
        name, options = (loss, None) if isinstance(loss, str) else next(iter(loss.items()))
        if name in losses:
            raise ConfigError(f"loss {text!r} names {name!r} twice")
        losses[name] = options
        settings |= own
    return losses, settings


def parse_entry(entry: str) -> list[tuple[Any, dict[str, Any]]]:
    """A comparison entry: one loss, a sum ``first+second``, or a schedule ``first>second`` (a stage each).

    Returns:
        Per stage, the loss spec and the settings given with it: keys of :data:`STAGE_OPTIONS`, which
        replace the base config's first-stage settings for that stage only, and ``model.KEY`` keys, which
        set the entry's model (:func:`read_entry` takes them out).
    """
    return [_parse_stage(part) for part in entry.split(">")]


@dataclass(frozen=True)
class Entry:
    """One entry of a comparison.

    Attributes:
        name: Its label in rows, tables and run folders (``--baseline`` names it).
        loss: The loss, sum or schedule (:func:`parse_entry`).
        model: Dotted keys of ``model`` it sets for every stage, e.g. ``{"options.decoder_attention_type": "scse"}``.
    """

    name: str
    loss: str
    model: dict[str, Any] = field(default_factory=dict)


def _dotted(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{options: {a: 1}}`` -> ``{"options.a": 1}``: a mapping's leaves by their dotted paths."""
    leaves: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        leaves |= _dotted(value, f"{path}.") if isinstance(value, Mapping) and value else {path: value}
    return leaves


def _checked_model_keys(name: str, keys: dict[str, Any]) -> dict[str, Any]:
    for key in keys:
        if key.split(".")[0] not in ModelConfig.model_fields:
            raise ConfigError(
                f"compare entry {name!r}: unknown model key {key!r}; allowed: {', '.join(ModelConfig.model_fields)}"
            )
    return keys


def read_entry(entry: str | Mapping[str, Any]) -> Entry:
    """An :class:`Entry` from a string (``bce>lovasz_hinge(lr=0.0005, model.options.decoder_attention_type=scse)``)
    or a mapping ``{name: ..., loss: ..., model: {...}}`` (``name`` defaults to ``loss``; ``model``'s keys
    may be nested or dotted).

    Raises:
        ConfigError: a mapping without ``loss`` or with other keys, or a model key that is no key of
            ``model``; the message names the entry and the key.
    """
    if isinstance(entry, str):
        return Entry(entry, entry, _checked_model_keys(entry, _model_keys_of(entry)))
    name = str(entry.get("name", entry.get("loss")))
    if unknown := sorted(set(entry) - set(_ENTRY_KEYS)):
        raise ConfigError(f"compare entry {name!r}: unknown key(s) {unknown}; allowed: {', '.join(_ENTRY_KEYS)}")
    if not isinstance(entry.get("loss"), str):
        raise ConfigError(f"compare entry {name!r}: give its loss as a string, e.g. loss: bce>lovasz_hinge")
    model = entry.get("model") or {}
    if not isinstance(model, Mapping):
        raise ConfigError(f"compare entry {name!r}: model must be a mapping of model keys, got {model!r}")
    keys = _model_keys_of(entry["loss"]) | _dotted(model)
    return Entry(name, entry["loss"], _checked_model_keys(name, keys))


def _model_keys_of(loss: str) -> dict[str, Any]:
    """The ``model.KEY=value`` options of an entry string's terms, by KEY."""
    return {
        key.removeprefix(MODEL_PREFIX): value
        for _, settings in parse_entry(loss)
        for key, value in settings.items()
        if key.startswith(MODEL_PREFIX)
    }


@dataclass
class CompareResult:
    """What a comparison produced.

    Attributes:
        out_dir: Where its runs and files are.
        rows: One row per run (entry and seed): the final metrics of its best checkpoint.
        summary: One row per entry: the mean and interval over seeds of each metric, and the paired
            difference to the baseline with its interval.
        stop_signal: The signal that interrupted the comparison, if one did.
    """

    out_dir: Path
    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]] = field(default_factory=list)
    stop_signal: int | None = None


def _entry_config(base: Config, entry: Entry, epochs: int, seed: int) -> Config:
    template = base.stages[0]
    terms = parse_entry(entry.loss)
    lengths = [epochs // len(terms)] * len(terms)
    lengths[-1] += epochs - sum(lengths)
    if min(lengths) < 1:
        raise ConfigError(f"{entry.name!r} has {len(terms)} stages but the budget is only {epochs} epochs")
    stages = [
        {**template.model_dump(), "name": str(index + 1), "loss": loss, "epochs": length}
        | {key: value for key, value in settings.items() if not key.startswith(MODEL_PREFIX)}
        for index, ((loss, settings), length) in enumerate(zip(terms, lengths, strict=True))
    ]
    tree = base.model_dump()
    for key, value in entry.model.items():
        _set_model_key(tree["model"], entry.name, key, value)
    try:
        return load_config({**tree, "stages": stages, "train": {**tree["train"], "seed": seed}})
    except ConfigError as error:
        raise ConfigError(f"compare entry {entry.name!r}: {error}") from error


def _set_model_key(model: dict[str, Any], name: str, key: str, value: Any) -> None:
    """Set dotted ``key`` (``options.decoder_attention_type``) in a dumped ``model`` section."""
    *sections, leaf = key.split(".")
    node = model
    for depth, section in enumerate(sections):
        child = node.setdefault(section, {})
        if not isinstance(child, dict):
            where = ".".join(sections[: depth + 1])
            raise ConfigError(f"compare entry {name!r}: model key {key!r}: model.{where} is a value, not a section")
        node = child
    node[leaf] = value


def _read_entries(losses: Sequence[str | Mapping[str, Any]], baseline: str | None) -> tuple[list[Entry], str]:
    """The entries of a comparison, their names distinct, and the baseline's name (default the first)."""
    entries = [read_entry(entry) for entry in losses]
    names = [entry.name for entry in entries]
    if len(set(names)) != len(names):
        raise ConfigError(f"compare entries {names} repeat a name; give each its own")
    baseline = baseline or names[0]
    if baseline not in names:
        raise ConfigError(f"baseline {baseline!r} is not one of the entries {names}")
    return entries, baseline


def _check_models(configs: dict[tuple[str, int], Config], entries: Sequence[Entry]) -> None:
    """Build the model of every entry that sets model keys (once, without weights): a bad
    ``model.options`` key is an error naming the entry before anything trains."""
    for entry in entries:
        if not entry.model:
            continue
        config = next(config for (name, _), config in configs.items() if name == entry.name)
        spec = config.data.spec()
        try:
            build_model(config.model, spec.in_channels, spec.num_classes, pretrained=False)
        except ConfigError as error:
            raise ConfigError(f"compare entry {entry.name!r}: {error}") from error


def _safe_name(entry: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", entry.replace(">", "-then-")).strip("_")


def _run_path(out_dir: Path, entry: str, seed: int | None) -> Path:
    """Where a comparison keeps one run: ``ENTRY/seed-S`` with ``--seeds``, else ``ENTRY``."""
    return out_dir / _safe_name(entry) / (f"seed-{seed}" if seed is not None else "")


def load_comparison(out_dir: Path) -> tuple[list[dict[str, Any]], dict[tuple[str, int], ImageStatistics]]:
    """The rows of a finished comparison's ``compare.csv`` and each run's per-image statistics, e.g. to
    :func:`summarise` it again against another baseline without its models."""
    rows = []
    for row in read_csv_rows(out_dir / COMPARE_FILE, ("loss", "seed")):
        rows.append({key: value if key == "loss" else yaml.safe_load(value) for key, value in row.items()})
    statistics = {}
    for row in rows:
        seeded = _run_path(out_dir, row["loss"], row["seed"])
        folder = seeded if seeded.is_dir() else _run_path(out_dir, row["loss"], None)
        statistics[row["loss"], row["seed"]] = ImageStatistics.load(folder / IMAGE_STATISTICS_FILE)
    return rows, statistics


def _base_config(
    config: Config | str | Path,
    overrides: Sequence[str],
    acceleration: AccelerationOverride,
    init_from: str | Path | None,
) -> Config:
    """``config`` with ``overrides``, then ``acceleration``'s train keys (after them: a typed option wins
    over a dotted override of the same key), and ``model.init_from`` set to ``init_from`` (made absolute:
    runs go elsewhere)."""
    base = resolve_config(config, [*overrides, *acceleration.config_overrides()], None)
    if init_from is None:
        return base
    path = Path(init_from)
    if not path.exists():
        raise ConfigError(f"--from {path}: no such run folder or checkpoint")
    tree = base.model_dump()
    tree["model"]["init_from"] = str(path.resolve())
    return load_config(tree)


def compare(
    config: Config | str | Path,
    losses: Sequence[str | Mapping[str, Any]],
    *,
    overrides: Sequence[str] = (),
    epochs: int | None = None,
    seeds: Sequence[int] | None = None,
    baseline: str | None = None,
    init_from: str | Path | None = None,
    out_dir: Path | None = None,
    retrain: bool = False,
    acceleration: AccelerationOverride = AccelerationOverride(),
    console: Console | None = None,
) -> CompareResult:
    """Train and evaluate the same setup once per loss and seed.

    Args:
        config: Base config (its first stage gives optimiser, learning rate and schedule).
        losses: Entries such as ``bce``, ``jaccard``, ``lovasz_hinge(variant=elu+1)``, a sum
            ``bce+lovasz_hinge`` or ``bce>lovasz_hinge`` (two stages, each half the budget, the second
            from the first's best). Stage settings can go with a loss: ``lovasz_hinge(lr=0.0005,
            warmup_steps=200, ema=0.999)`` (see :data:`STAGE_OPTIONS`), and model keys for the whole
            entry: ``bce(model.options.decoder_attention_type=scse)``; or mappings ``{"name": "bce-scse",
            "loss": "bce", "model": {"options": {"decoder_attention_type": "scse"}}}`` (see :func:`read_entry`).
        overrides: ``key.path=value`` overrides of the base config.
        epochs: Epoch budget of every entry (default: the base config's total).
        seeds: Train every entry once per seed (``train.seed``: the initial weights, data order and
            augmentation); default the config's one seed. Runs go to ``out/ENTRY/seed-S`` when given.
        baseline: The entry the others are compared with (default: the first).
        init_from: A run folder or checkpoint every entry starts from (``model.init_from``): each then
            continues for ``epochs`` from the same weights, the seed changing only data order and augmentation.
        out_dir: Where the runs and the comparison go (default ``runs_dir/NAME-compare``).
        retrain: Train every run again. By default a run whose folder already holds a finished run of
            the same config is only evaluated again, so an interrupted comparison continues where it
            stopped and a finished one can be re-scored.
        acceleration: ``train.amp``, ``train.channels_last`` and ``train.compile`` of every run (``--amp``,
            ``--channels-last``, ``--compile``), set as the overrides ``train.amp=...`` would: each entry
            trains, validates and is evaluated with them, and a finished run of other settings is retrained.
        console: Where progress and the tables go.

    Returns:
        :class:`CompareResult`.
    """
    console = console or Console()
    base = _base_config(config, overrides, acceleration, init_from)
    budget = epochs or sum(stage.epochs for stage in base.stages)
    entries, baseline = _read_entries(losses, baseline)
    seed_list = list(seeds) if seeds else [base.train.seed]
    if len(set(seed_list)) != len(seed_list):
        raise ConfigError(f"seeds {seed_list} repeat a seed")
    out_dir = Path(out_dir or Path(base.output.runs_dir) / f"{base.output.name or 'run'}-compare")
    configs = {  # every config error before any training
        (entry.name, seed): _entry_config(base, entry, budget, seed) for entry in entries for seed in seed_list
    }
    _check_models(configs, entries)
    rows, histories, statistics, stop_signal = [], {}, {}, None
    for (entry, seed), entry_config in configs.items():
        console.rule(f"[bold]{entry}" + (f", seed {seed}" if seeds else ""))
        folder = RunFolder(_run_path(out_dir, entry, seed if seeds else None))
        if not retrain and folder.finished_as(entry_config):
            console.print(f"reusing the finished run {folder.path}")
            histories[entry, seed] = folder.summary()
        else:
            result = train(entry_config, run_dir=folder.path, overwrite=True, console=console)
            if not result.completed:  # Ctrl-C / SIGTERM: stop the whole comparison, keep what finished
                console.print(f"[yellow]interrupted during {entry!r}; the comparison covers the runs before it")
                stop_signal = result.stop_signal
                break
            histories[entry, seed] = result.history
        recorder = ImageRecorder(entry_config.data.spec())
        metrics = evaluate_run(folder.path, console=console, recorder=recorder)
        statistics[entry, seed] = recorder.statistics
        recorder.statistics.save(folder.path / IMAGE_STATISTICS_FILE)
        rows.append({"loss": entry, "seed": seed, "epochs": budget, **{k: round(v, 6) for k, v in metrics.items()}})
    if not rows:
        return CompareResult(out_dir, rows, [], stop_signal)
    summary = _report(out_dir, rows, histories, statistics, baseline, metric_names(base.data.spec())[0], console)
    return CompareResult(out_dir, rows, summary, stop_signal)


def _report(
    out_dir: Path,
    rows: list[dict[str, Any]],
    histories: dict[tuple[str, int], list[dict[str, str]]],
    statistics: dict[tuple[str, int], ImageStatistics],
    baseline: str,
    metric: str,
    console: Console,
) -> list[dict[str, Any]]:
    """Write ``compare.csv``, its summary and ``compare.png`` (curves of ``metric``), print the tables,
    and return the summary."""
    summary = summarise(rows, statistics, baseline)
    write_rows_csv(out_dir / COMPARE_FILE, rows)
    write_rows_csv(out_dir / SUMMARY_FILE, summary)
    _plot(histories, rows, summary, out_dir / "compare.png", metric)
    for table in comparison_tables(summary, baseline):
        console.print(table)
    return summary


def write_rows_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rows as a CSV (columns in order of first appearance), atomically: ``compare.csv`` and its summaries."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_write(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def summarised_metrics(row: dict[str, Any]) -> list[str]:
    """The headline metrics a row holds, in display order."""
    return [name for name in _BAR_METRICS if name in row]


def summarise(
    rows: Sequence[dict[str, Any]], statistics: dict[tuple[str, int], ImageStatistics], baseline: str
) -> list[dict[str, Any]]:
    """Per entry: ``M`` (mean over seeds), ``M_low``/``M_high`` (its 95% t-interval), ``M_diff`` with
    ``M_diff_low``/``M_diff_high`` (paired bootstrap against ``baseline`` over the seeds both have)."""
    entries = list(dict.fromkeys(row["loss"] for row in rows))
    names = summarised_metrics(rows[0])
    summary = []
    for entry in entries:
        runs = [row for row in rows if row["loss"] == entry]
        shared = [row["seed"] for row in runs if (baseline, row["seed"]) in statistics]
        line: dict[str, Any] = {"loss": entry, "seeds": len(runs)}
        for name in names:
            spread = mean_interval([row[name] for row in runs])
            line |= {name: spread.estimate, f"{name}_low": spread.low, f"{name}_high": spread.high}
            if entry != baseline and shared:
                ours = [statistics[entry, seed] for seed in shared]
                theirs = [statistics[baseline, seed] for seed in shared]
                difference = paired_bootstrap(ours, theirs, name)
                line |= {f"{name}_diff": difference.estimate, f"{name}_diff_low": difference.low}
                line |= {f"{name}_diff_high": difference.high, f"{name}_diff_real": difference.excludes_zero}
        summary.append({key: round(value, 6) if isinstance(value, float) else value for key, value in line.items()})
    return summary


def _interval_text(estimate: float, low: float, high: float, signed: bool = False) -> str:
    value = f"{estimate:+.4f}" if signed else f"{estimate:.4f}"
    if math.isnan(low):
        return value
    return f"{value} [{low:+.4f}, {high:+.4f}]" if signed else f"{value} [{low:.4f}, {high:.4f}]"


def comparison_tables(summary: Sequence[dict[str, Any]], baseline: str) -> list[Table]:
    """The mean of each metric over seeds with its interval, and each entry's paired difference to the
    baseline, marked ``noise`` where its interval includes 0."""
    names = summarised_metrics(summary[0])
    seeds = max(line["seeds"] for line in summary)
    level = f"{CONFIDENCE:.0%}"
    means = Table(
        title=f"best checkpoint on the validation split: mean over {seeds} seed(s)"
        + (f" [{level} interval]" if seeds > 1 else "")
    )
    differences = Table(
        title=f"difference to {baseline} [{level} paired bootstrap interval over images and seeds]; "
        "noise: the interval includes 0"
    )
    # Folded, never cut to "…": a narrow terminal or a log file (80 columns) must still show every digit.
    for table in (means, differences):
        table.add_column("loss", overflow="fold")
        for name in names:
            table.add_column(name.replace(at_best_threshold_key(""), " @best"), justify="right", overflow="fold")
    for line in summary:
        means.add_row(line["loss"], *(_interval_text(line[n], line[f"{n}_low"], line[f"{n}_high"]) for n in names))
        if line["loss"] == baseline or f"{names[0]}_diff" not in line:
            continue
        cells = []
        for name in names:
            interval = Interval(line[f"{name}_diff"], line[f"{name}_diff_low"], line[f"{name}_diff_high"])
            text = _interval_text(interval.estimate, interval.low, interval.high, signed=True)
            cells.append(text if interval.excludes_zero else f"[dim]{text} noise")
        differences.add_row(line["loss"], *cells)
    return [means, differences] if differences.row_count else [means]


def _plot(
    histories: dict[tuple[str, int], list[dict[str, str]]],
    rows: Sequence[dict[str, Any]],
    summary: Sequence[dict[str, Any]],
    path: Path,
    metric: str,
) -> None:
    """Validation curves of ``metric`` (a line per seed; the dataset's headline metric) and the final
    metrics: mean bars, interval whiskers, a dot per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curve_axis, bar_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = dict(
        zip(
            [line["loss"] for line in summary],
            plt.get_cmap("tab10" if len(summary) <= 10 else "tab20").colors,
            strict=False,
        )
    )
    for (entry, _seed), history in histories.items():
        epochs = range(1, len(history) + 1)
        label = entry if entry not in curve_axis.get_legend_handles_labels()[1] else None
        values = [float(r[metric]) for r in history]
        curve_axis.plot(epochs, values, marker=".", color=colours[entry], label=label, alpha=0.8, linewidth=1)
    curve_axis.set(xlabel="epoch", ylabel=f"validation {metric}", title="per epoch (a line per seed)")
    curve_axis.grid(alpha=0.3)
    names = summarised_metrics(rows[0])
    width = 0.8 / len(summary)
    for index, line in enumerate(summary):
        colour, positions = colours[line["loss"]], [i + index * width for i in range(len(names))]
        errors = [
            [0.0 if math.isnan(line[f"{n}_low"]) else line[n] - line[f"{n}_low"] for n in names],
            [0.0 if math.isnan(line[f"{n}_high"]) else line[f"{n}_high"] - line[n] for n in names],
        ]
        # Points, not bars: the axis is zoomed to the values, where differences are visible.
        bar_axis.errorbar(positions, [line[n] for n in names], yerr=errors, fmt="o", color=colour, capsize=3)
        for position, name in zip(positions, names, strict=True):
            seeds = [row[name] for row in rows if row["loss"] == line["loss"]]
            bar_axis.plot([position] * len(seeds), seeds, ".", color=colour, markersize=4, alpha=0.5)
    labels = [name.replace(at_best_threshold_key(""), "\n@ best threshold") for name in names]
    bar_axis.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], labels, fontsize=8)
    bar_axis.set(title="best checkpoint: mean, 95% interval, seeds (dots)")
    bar_axis.grid(axis="y", alpha=0.3)
    # One legend below both panels: the same colour is the same entry in each.
    columns = min(len(summary), 3)
    figure.legend(*curve_axis.get_legend_handles_labels(), loc="lower center", ncol=columns, fontsize=9)
    figure.tight_layout(rect=(0, 0.06 * -(-len(summary) // columns), 1, 1))
    figure.savefig(path, dpi=90)
    plt.close(figure)
