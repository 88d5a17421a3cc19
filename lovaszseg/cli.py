"""Command-line interface. Commands only parse arguments and call typed library functions.

Heavy imports (torch, smp, albumentations) happen inside the commands, so ``--help`` is instant.
Errors the user caused (:class:`~lovaszseg.errors.LovaszsegError`) are one red line and exit code 2;
an interrupted run exits 130 (Ctrl-C) or 143 (SIGTERM); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import signal
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from lovaszseg.errors import LovaszsegError, LovaszsegWarning
from lovaszseg.inference.export import describe_formats
from lovaszseg.inference.tta import NO_TTA, tta_names
from lovaszseg.runtime.acceleration import AMP_MODES, AccelerationOverride
from lovaszseg.thresholds import DEFAULT_THRESHOLD

console = Console()
Result = TypeVar("Result")

app = typer.Typer(
    name="lovaszseg",
    help="Semantic segmentation with the Lovász losses: train, evaluate, predict and submit.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    # Help as Markdown: a docstring paragraph wraps to the terminal (Rich mode keeps its source line breaks).
    rich_markup_mode="markdown",
)
data_app = typer.Typer(help="Generate and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


USER_ERROR_EXIT = 2


def _user_errors(function: Callable[..., Result], *args: Any, **kwargs: Any) -> Result:
    """Run a library call; show a user mistake (bad file, key or value) as one red line and exit 2.

    A second Ctrl-C (``KeyboardInterrupt``) exits 130 at once, without a traceback.
    """
    from lovaszseg.runtime.interrupt import exit_code

    try:
        with _warnings_as_lines():
            return function(*args, **kwargs)
    except LovaszsegError as error:
        console.print(f"[red]error:[/red] {error}", soft_wrap=True, markup=True, highlight=False)
        raise typer.Exit(USER_ERROR_EXIT) from error
    except KeyboardInterrupt as error:
        console.print("[yellow]interrupted[/yellow]")
        raise typer.Exit(exit_code(signal.SIGINT)) from error


@contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Show a :class:`LovaszsegWarning` (a choice allowed but probably not meant) as one yellow line."""
    shown = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, LovaszsegWarning):
            console.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True, markup=True, highlight=False)
        else:
            shown(message, category, *args, **kwargs)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def _exit_if_interrupted(signum: int | None) -> None:
    """Exit 130 / 143 when a run was stopped by SIGINT / SIGTERM, so a script or scheduler sees it."""
    from lovaszseg.runtime.interrupt import exit_code

    if signum is not None:
        raise typer.Exit(exit_code(signum))


@data_app.command("synth-salt")
def synth_salt_command(
    out_dir: Path = typer.Argument(..., help="Folder to create in the Kaggle TGS Salt layout."),
    n_train: int = typer.Option(400, help="Training images (with masks, train.csv RLE)."),
    n_test: int = typer.Option(100, help="Test images (listed in sample_submission.csv)."),
    seed: int = typer.Option(0, help="Seed: the same seed writes identical files."),
    overwrite: bool = typer.Option(False, help="Replace OUT_DIR if it is not empty."),
) -> None:
    """Write a synthetic TGS-Salt-like dataset (seismic images, salt masks) in the Kaggle layout."""
    from lovaszseg.data.synth import synth_salt

    root = _user_errors(synth_salt, out_dir, n_train=n_train, n_test=n_test, seed=seed, overwrite=overwrite)
    console.print(f"wrote {n_train} training and {n_test} test images to {root}")


@data_app.command("synth-voc")
def synth_voc_command(
    out_dir: Path = typer.Argument(..., help="Folder to create; it will hold VOCdevkit/VOC2012."),
    n_images: int = typer.Option(60, help="Image/mask pairs."),
    seed: int = typer.Option(0, help="Seed: the same seed writes identical files."),
    height: int = typer.Option(160, help="Image height in pixels."),
    width: int = typer.Option(160, help="Image width in pixels."),
    overwrite: bool = typer.Option(False, help="Replace OUT_DIR if it is not empty."),
) -> None:
    """Write a synthetic Pascal-VOC-like dataset (six object classes, void borders) in the VOC layout."""
    from lovaszseg.data.synth import synth_voc

    root = _user_errors(synth_voc, out_dir, n_images=n_images, seed=seed, size=(height, width), overwrite=overwrite)
    console.print(f"wrote {n_images} images to {root / 'VOCdevkit' / 'VOC2012'}")


@app.command("train")
def train_command(
    config: Path | None = typer.Argument(
        None, help="YAML config (e.g. configs/salt.yaml). Omit to train the demo on built-in synthetic data."
    ),
    overrides: list[str] | None = typer.Argument(
        None, help="Dotted overrides, e.g. stages.0.epochs=5 model.encoder=resnet18 data.root=data/tgs."
    ),
    resume: Path | None = typer.Option(
        None, "--resume", help="Run folder to continue from its last.pt, with its saved config (no CONFIG)."
    ),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Write the run here instead of runs/NAME (refused if it holds a run)."
    ),
    overwrite: bool = typer.Option(
        False, help="Replace what the run folder holds (instead of refusing --run-dir or creating runs/NAME-2)."
    ),
) -> None:
    """Train a segmentation model from a YAML config (stages, losses, data, model).

    With no arguments, trains the demo (a small UNet, BCE then Lovász hinge) on built-in synthetic salt
    data in a few minutes. The run folder gets config.yaml, summary.csv, curves.png, last.pt, best.pt
    and, at the end, model.safetensors. Ctrl-C or SIGTERM stops after the current step, keeps last.pt
    and exits 130 / 143 (a second Ctrl-C stops at once); continue with --resume RUN_DIR. A diverging
    run stops with exit code 2 and exports nothing. Under torchrun, trains with DistributedDataParallel.
    """
    from lovaszseg.training import train

    overrides = list(overrides or [])
    if config is not None and "=" in config.name and not config.exists():  # overrides of the demo config
        config, overrides = None, [str(config), *overrides]
    result = _user_errors(
        train, config, overrides, resume=resume, run_dir=run_dir, overwrite=overwrite, console=console
    )
    _exit_if_interrupted(result.stop_signal)
    if result.completed:
        console.print(f"done: {result.run_dir}")


TTA_HELP = (
    "Test-time augmentation: none, or transforms joined by '+' from "
    + ", ".join(name for name in tta_names() if name != NO_TTA)
    + " (every combination of their views, each undone), then ':mean' (default) or ':gmean', "
    "e.g. hflip, d4:gmean, hflip+scale=0.75,1.25."
)
WINDOW_OPTION = typer.Option(
    None,
    "--window",
    help="Sliding-window inference for images larger than the network: crops of HxW (e.g. 512x512), "
    "merged by weight; none: whole images. Default: the model's inference.window (whole images).",
)
STRIDE_OPTION = typer.Option(
    None, "--stride", help="Pixels between windows, SxS (default: the window: tiles). Needs a window."
)
WINDOW_WEIGHTING_OPTION = typer.Option(
    None, "--window-weighting", help="How a window's pixels are weighted: uniform or gaussian (centre first)."
)
DEVICE_HELP = "auto (CUDA if available), cpu, cuda or cuda:N."
MODELS_HELP = (
    "Run folder or model file (a run's .pt, e.g. a cosine-restart snapshot, or a .safetensors), cv folder "
    "(all its folds) or ensemble folder; several make an ensemble (probabilities averaged)."
)
WEIGHTS_HELP = "Ensemble weights, one per model argument, comma-separated (default: equal), e.g. 2,1,1."
THRESHOLD_HELP = (
    f"Binary models: probability threshold in [0, 1] (default {DEFAULT_THRESHOLD}), or auto (tuned: out of "
    "fold for a cv folder, else on the validation split)."
)
MIN_AREA_HELP = (
    "Binary models: masks with fewer foreground pixels are emptied (default 0: never), or auto (tuned for the "
    "threshold used)."
)
EMPTY_GATE_HELP = (
    "Models with an empty-image head (model.empty_head): an image whose head probability of foreground is "
    "below it is predicted empty (default 0: never), or auto (tuned with the threshold and min-area)."
)

# The models' own train.amp / channels_last / compile, changed for this call only.
AMP_OPTION = typer.Option(
    None,
    "--amp",
    help=f"Mixed precision: {', '.join(AMP_MODES)} (auto: bf16 where the device computes it natively, "
    "else float32). Default: each model's train.amp.",
)
CHANNELS_LAST_OPTION = typer.Option(
    None, "--channels-last/--no-channels-last", help="Channels-last memory. Default: each model's train.channels_last."
)
COMPILE_OPTION = typer.Option(
    None, "--compile/--no-compile", help="torch.compile the models. Default: each model's train.compile."
)
# cv and compare train the models they predict with: the options set the config's train keys, as the
# dotted overrides train.amp=... would, for training, validation and prediction alike.
TRAIN_AMP_OPTION = typer.Option(
    None,
    "--amp",
    help=f"Mixed precision: {', '.join(AMP_MODES)} (auto: bf16 where the device computes it natively, "
    "else float32). Sets train.amp of every run it trains (default: the config's).",
)
TRAIN_CHANNELS_LAST_OPTION = typer.Option(
    None,
    "--channels-last/--no-channels-last",
    help="Channels-last memory. Sets train.channels_last of every run it trains (default: the config's).",
)
TRAIN_COMPILE_OPTION = typer.Option(
    None,
    "--compile/--no-compile",
    help="torch.compile the model. Sets train.compile of every run it trains (default: the config's).",
)


def _acceleration(amp: str | None, channels_last: bool | None, compile_model: bool | None) -> AccelerationOverride:
    return _user_errors(AccelerationOverride, amp, channels_last, compile_model)  # an unknown --amp is one line


def _window(window: str | None, stride: str | None, weighting: str | None) -> Any:
    from lovaszseg.inference.window import WindowOverride

    return _user_errors(WindowOverride.parse, window, stride, weighting)  # a malformed size is one line


def _parse_weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        console.print(f"[red]error:[/red] --weights must be comma-separated numbers, got {text!r}")
        raise typer.Exit(USER_ERROR_EXIT) from None


def _parse_auto(option: str, text: str | None, kind: type) -> Any:
    """A number of ``kind``, the string ``auto``, or None when the option was not given (the library
    checks the value's range: one place for it)."""
    if text is None or text == "auto":
        return text
    try:
        return kind(text)
    except ValueError:
        what = "a number in [0, 1]" if kind is float else "a whole number of pixels"
        console.print(f"[red]error:[/red] --{option} must be {what} or 'auto', got {text!r}")
        raise typer.Exit(USER_ERROR_EXIT) from None


@app.command("cv")
def cv_command(
    config: Path | None = typer.Argument(None, help="YAML config (e.g. configs/salt.yaml); omit for the demo config."),
    overrides: list[str] | None = typer.Argument(None, help="Dotted overrides, e.g. stages.0.epochs=5."),
    folds: str | None = typer.Option(
        None, help="Number of folds K (default 5), or the folds to train as a comma list (e.g. 0,3; one fold: 2,)."
    ),
    n_folds: int | None = typer.Option(None, help="K when --folds lists folds (default 5, or the resumed cv's)."),
    holdout: int = typer.Option(
        0, help="Labelled images kept out of every fold as a final test (eval --split holdout)."
    ),
    tta: str = typer.Option("none", help=TTA_HELP + " Used for the out-of-fold predictions."),
    amp: str | None = TRAIN_AMP_OPTION,
    channels_last: bool | None = TRAIN_CHANNELS_LAST_OPTION,
    compile_model: bool | None = TRAIN_COMPILE_OPTION,
    resume: Path | None = typer.Option(
        None, "--resume", help="cv folder to continue (no CONFIG): finished folds are skipped."
    ),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Write the cv here instead of runs/NAME-cv (refused if it holds something)."
    ),
    overwrite: bool = typer.Option(False, help="Replace what the cv folder holds."),
) -> None:
    """K-fold cross-validation: a run per fold, out-of-fold predictions, post-processing tuned on them.

    Folds follow the dataset's own rules (TGS: stratified by salt coverage; other data: a seeded split).
    Fold K trains into CV/fold-K, an ordinary run folder; Ctrl-C keeps what is done and --resume CV
    continues. Afterwards every training image is predicted by the model that did not train on it
    (CV/oof.npz), per-fold and out-of-fold metrics are printed and saved (cv.csv), and for binary data
    the threshold and min-area are tuned on the out-of-fold predictions (postprocess.json). The cv folder
    is then a model for eval, predict and submit (an ensemble of its folds). Under torchrun, each fold
    trains with DistributedDataParallel.
    """
    from lovaszseg.workflows.cv import cross_validate, parse_folds

    overrides = list(overrides or [])
    if config is not None and "=" in config.name and not config.exists():
        config, overrides = None, [str(config), *overrides]
    k, chosen = _user_errors(parse_folds, folds) if folds is not None else (None, None)
    result = _user_errors(
        cross_validate,
        config,
        overrides,
        n_folds=k or n_folds,
        folds=chosen,
        holdout=holdout,
        tta=tta,
        acceleration=_acceleration(amp, channels_last, compile_model),
        run_dir=run_dir,
        resume=resume,
        overwrite=overwrite,
        console=console,
    )
    _exit_if_interrupted(result.stop_signal)
    if result.completed:
        console.print(f"done: {result.cv_dir}")


@app.command("ensemble")
def ensemble_command(
    members: list[Path] = typer.Argument(..., help=MODELS_HELP),
    out: Path = typer.Option(..., "--out", help="Ensemble folder to write (ensemble.yaml)."),
    weights: str | None = typer.Option(None, help=WEIGHTS_HELP),
    overwrite: bool = typer.Option(False, help="Replace an existing ensemble folder."),
) -> None:
    """Write an ensemble folder: its members and weights, checked to agree; usable wherever a run is."""
    from lovaszseg.inference.ensemble import write_ensemble

    predictor = _user_errors(write_ensemble, members, out, weights=_parse_weights(weights), overwrite=overwrite)
    console.print(f"wrote {out} ({len(predictor.members)} models)")
    for member in predictor.members:
        console.print(f"  {member.weight:.4g}  {member.path}", soft_wrap=True, markup=False, highlight=False)
    if (tuning := predictor.tuning()) is not None:
        console.print(f"post-processing: {tuning.describe()}", soft_wrap=True, markup=False, highlight=False)


@app.command("eval")
def eval_command(
    runs: list[Path] = typer.Argument(..., help=MODELS_HELP),
    split: str | None = typer.Option(
        None,
        help="Split to score: val (default), train, all (TGS), a VOC split or a .txt of ids; "
        "for a cv folder oof (default) or holdout.",
    ),
    weights: str | None = typer.Option(None, help=WEIGHTS_HELP),
    tta: str = typer.Option("none", help=TTA_HELP),
    window: str | None = WINDOW_OPTION,
    stride: str | None = STRIDE_OPTION,
    window_weighting: str | None = WINDOW_WEIGHTING_OPTION,
    device: str = typer.Option("auto", help=DEVICE_HELP),
    amp: str | None = AMP_OPTION,
    channels_last: bool | None = CHANNELS_LAST_OPTION,
    compile_model: bool | None = COMPILE_OPTION,
    data_root: Path | None = typer.Option(None, help="Dataset root, if not the one in the run's config."),
) -> None:
    """Score a model or an ensemble; prints a table and writes eval.json.

    Binary models also get the best threshold and the metrics after post-processing (threshold and
    min-area): tuned on this split and kept for predict/submit --threshold auto, or, for a cv folder,
    the values tuned out of fold.
    """
    from rich.table import Table

    from lovaszseg.workflows.runs import evaluate_run

    result = _user_errors(
        evaluate_run,
        runs,
        weights=_parse_weights(weights),
        split=split,
        tta=tta,
        window=_window(window, stride, window_weighting),
        device=device,
        acceleration=_acceleration(amp, channels_last, compile_model),
        data_root=data_root,
        console=console,
    )
    table = Table(title=f"{' + '.join(map(str, runs))} on {result.split} (tta {result.tta})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.items():
        table.add_row(name, f"{value:.0f}" if name.endswith("min_area") else f"{value:.4f}")
    console.print(table)


@app.command("predict")
def predict_command(
    runs: list[Path] = typer.Argument(..., help=MODELS_HELP),
    images_dir: Path = typer.Argument(..., help="Folder of images to segment."),
    out_dir: Path = typer.Argument(..., help="Output folder: masks/ and overlays/ PNGs are written there."),
    weights: str | None = typer.Option(None, help=WEIGHTS_HELP),
    tta: str = typer.Option("none", help=TTA_HELP),
    window: str | None = WINDOW_OPTION,
    stride: str | None = STRIDE_OPTION,
    window_weighting: str | None = WINDOW_WEIGHTING_OPTION,
    threshold: str | None = typer.Option(None, help=THRESHOLD_HELP),
    min_area: str | None = typer.Option(None, help=MIN_AREA_HELP),
    empty_gate: str | None = typer.Option(None, help=EMPTY_GATE_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    amp: str | None = AMP_OPTION,
    channels_last: bool | None = CHANNELS_LAST_OPTION,
    compile_model: bool | None = COMPILE_OPTION,
) -> None:
    """Predict masks (VOC palette PNGs for multi-class models) and image+mask overlays."""
    from lovaszseg.workflows.runs import predict_run

    count = _user_errors(
        predict_run,
        runs,
        images_dir,
        out_dir,
        weights=_parse_weights(weights),
        tta=tta,
        window=_window(window, stride, window_weighting),
        threshold=_parse_auto("threshold", threshold, float),
        min_area=_parse_auto("min-area", min_area, int),
        empty_gate=_parse_auto("empty-gate", empty_gate, float),
        device=device,
        acceleration=_acceleration(amp, channels_last, compile_model),
        console=console,
    )
    console.print(f"wrote {count} masks to {out_dir / 'masks'} and overlays to {out_dir / 'overlays'}")


@app.command("submit")
def submit_command(
    runs: list[Path] = typer.Argument(..., help=MODELS_HELP + " Binary (salt) models."),
    test_dir: Path = typer.Argument(..., help="Test images, or Kaggle's test/ folder holding images/."),
    out: Path = typer.Option(Path("submission.csv"), "--out", help="CSV to write (validated before writing)."),
    weights: str | None = typer.Option(None, help=WEIGHTS_HELP),
    tta: str = typer.Option("none", help=TTA_HELP),
    window: str | None = WINDOW_OPTION,
    stride: str | None = STRIDE_OPTION,
    window_weighting: str | None = WINDOW_WEIGHTING_OPTION,
    threshold: str | None = typer.Option(None, help=THRESHOLD_HELP),
    min_area: str | None = typer.Option(None, help=MIN_AREA_HELP),
    empty_gate: str | None = typer.Option(None, help=EMPTY_GATE_HELP),
    sample_submission: Path | None = typer.Option(
        None, help="Kaggle's sample_submission.csv (default: the one beside TEST_DIR): ids must match it."
    ),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    amp: str | None = AMP_OPTION,
    channels_last: bool | None = CHANNELS_LAST_OPTION,
    compile_model: bool | None = COMPILE_OPTION,
) -> None:
    """Write a Kaggle TGS Salt submission: id,rle_mask for every test image, masks at 101x101.

    Images stream through the model or ensemble and rows are encoded as they come (memory does not
    grow with the test set); the file is validated before it replaces anything.
    """
    from lovaszseg.workflows.runs import submit_run

    path, used = _user_errors(
        submit_run,
        runs,
        test_dir,
        out,
        weights=_parse_weights(weights),
        tta=tta,
        window=_window(window, stride, window_weighting),
        threshold=_parse_auto("threshold", threshold, float),
        min_area=_parse_auto("min-area", min_area, int),
        empty_gate=_parse_auto("empty-gate", empty_gate, float),
        sample_submission=sample_submission,
        device=device,
        acceleration=_acceleration(amp, channels_last, compile_model),
        console=console,
    )
    gate = f", empty-gate {used.empty_gate:.3f}" if used.empty_gate else ""
    console.print(f"wrote {path} (threshold {used.threshold:.2f}, min-area {used.min_area}{gate})")


@app.command("pseudo-label")
def pseudo_label_command(
    runs: list[Path] = typer.Argument(..., help=MODELS_HELP),
    images_dir: Path = typer.Argument(..., help="Folder of unlabelled images (e.g. Kaggle's test/images)."),
    out: Path = typer.Option(..., "--out", help="The pseudo-label folder to write (images/, masks/, pseudo.csv)."),
    weights: str | None = typer.Option(None, help=WEIGHTS_HELP),
    tta: str | None = typer.Option(None, help=TTA_HELP + " Default: the TTA the post-processing was tuned with."),
    threshold: str = typer.Option("auto", help=THRESHOLD_HELP + " Default here: auto."),
    min_area: str = typer.Option("auto", help=MIN_AREA_HELP + " Default here: auto."),
    empty_gate: str | None = typer.Option(None, help=EMPTY_GATE_HELP),
    band: str = typer.Option("0.2,0.8", help="Probabilities in LOW,HIGH are uncertain."),
    max_uncertain: float = typer.Option(0.05, help="Keep images with at most this share of uncertain pixels."),
    min_agreement: float = typer.Option(
        0.8, help="Ensembles: keep images whose members agree with the ensemble at least this much (mean IoU)."
    ),
    overwrite: bool = typer.Option(False, help="Replace what --out holds."),
    window: str | None = WINDOW_OPTION,
    stride: str | None = STRIDE_OPTION,
    window_weighting: str | None = WINDOW_WEIGHTING_OPTION,
    device: str = typer.Option("auto", help=DEVICE_HELP),
    amp: str | None = AMP_OPTION,
    channels_last: bool | None = CHANNELS_LAST_OPTION,
    compile_model: bool | None = COMPILE_OPTION,
) -> None:
    """Label unlabelled images with a model and keep the confident ones as training data.

    Writes a folder of the kept images, their post-processed masks and a table of every image's
    confidence (pseudo.csv); a config adds it to the training data with data.pseudo: [FOLDER].
    """
    from lovaszseg.workflows.pseudo import ConfidenceRule, pseudo_label

    rule = _user_errors(ConfidenceRule, _parse_band(band), max_uncertain, min_agreement)
    result = _user_errors(
        pseudo_label,
        runs,
        images_dir,
        out,
        weights=_parse_weights(weights),
        tta=tta,
        threshold=_parse_auto("threshold", threshold, float),
        min_area=_parse_auto("min-area", min_area, int),
        empty_gate=_parse_auto("empty-gate", empty_gate, float),
        rule=rule,
        overwrite=overwrite,
        device=device,
        acceleration=_acceleration(amp, channels_last, compile_model),
        window=_window(window, stride, window_weighting),
        console=console,
    )
    console.print(f"kept {result.kept} of {result.images} images in {result.out}")


def _parse_band(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        console.print(f"[red]error:[/red] --band must be two probabilities LOW,HIGH, got {text!r}")
        raise typer.Exit(USER_ERROR_EXIT) from None
    return low, high


@app.command("export")
def export_command(
    run: Path = typer.Argument(..., help="Run folder or model file (a run's .pt, or an exported .safetensors)."),
    export_format: str = typer.Option(..., "--format", help=f"One of: {describe_formats()}."),
    out: Path = typer.Option(..., "--out", help="The file or folder to write (checked before the model is loaded)."),
    overwrite: bool = typer.Option(False, help="Replace --out if it exists (a file, or a folder that is not empty)."),
) -> None:
    """Export a trained model for use without lovaszseg: ONNX (onnxruntime, ...), smp's save_pretrained folder, ...

    ONNX: input 'images' [batch, C, height, width] normalised as printed, output 'logits' [batch, classes,
    height, width]; dynamic batch (and height and width when the graph allows), checked against PyTorch
    with onnxruntime before it is written. smp: segmentation_models_pytorch.from_pretrained(OUT) gives the
    same model. Prints what the model takes and returns (also stored with it).
    """
    from lovaszseg.inference.export import export_run

    result = _user_errors(export_run, run, export_format, out, overwrite=overwrite)
    console.print(
        f"wrote {result.path} ({result.label}) from {result.source}", soft_wrap=True, markup=False, highlight=False
    )
    rows = dict(result.usage)
    if result.max_difference is not None:
        rows["checked"] = (
            f"{result.checked_with} vs PyTorch: max abs difference of probabilities {result.max_difference:.1e}"
        )
    for name, text in rows.items():
        console.print(f"  {name:<14} {text}", soft_wrap=True, markup=False, highlight=False)


def _parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        console.print(f"[red]error:[/red] --seeds must be comma-separated non-negative integers, got {text!r}")
        raise typer.Exit(USER_ERROR_EXIT)
    return seeds


@app.command("compare")
def compare_command(
    config: Path = typer.Argument(..., help="Base YAML config (model, data, seed, first stage's optimiser)."),
    overrides: list[str] | None = typer.Argument(None, help="Dotted overrides of the base config."),
    losses: str = typer.Option(
        "bce,jaccard,lovasz_hinge,bce>lovasz_hinge",
        help="Comma-separated entries: a loss (NAME or NAME(option=value; ...)), a sum FIRST+SECOND "
        "or a schedule FIRST>SECOND. Stage settings go with a loss: lovasz_hinge(lr=0.0005; ema=0.999); "
        "model keys too, for the whole entry: bce(model.options.decoder_attention_type=scse).",
    ),
    epochs: int | None = typer.Option(None, help="Epoch budget of every entry (default: the config's total)."),
    seeds: str | None = typer.Option(
        None, help="Train every entry once per seed, e.g. 0,1,2: means with 95% intervals over seeds."
    ),
    baseline: str | None = typer.Option(
        None, help="The entry the others are compared with, image by image (default: the first)."
    ),
    init_from: Path | None = typer.Option(
        None,
        "--from",
        help="Run folder or checkpoint every entry starts from (fine-tuning: all continue from the same weights).",
    ),
    out_dir: Path | None = typer.Option(None, "--out-dir", help="Folder for the runs and compare.csv/.png."),
    retrain: bool = typer.Option(
        False, help="Train every entry again instead of re-scoring finished runs of the same config."
    ),
    amp: str | None = TRAIN_AMP_OPTION,
    channels_last: bool | None = TRAIN_CHANNELS_LAST_OPTION,
    compile_model: bool | None = TRAIN_COMPILE_OPTION,
) -> None:
    """Train the same model, data, seeds and budget once per loss; compare them on the validation split.

    The tables show each metric's mean over seeds with its 95% interval, and each entry's difference to
    the baseline with a paired bootstrap interval over validation images and seeds ("noise" where the
    interval includes 0). Running the same command again continues an interrupted comparison: runs
    that already finished with the same config are evaluated again, not retrained.
    """
    from lovaszseg.workflows.compare import COMPARE_FILE, SUMMARY_FILE, compare

    entries = [entry.strip().replace(";", ",") for entry in losses.split(",") if entry.strip()]
    result = _user_errors(
        compare,
        config,
        entries,
        overrides=overrides or [],
        epochs=epochs,
        seeds=_parse_seeds(seeds),
        baseline=baseline.replace(";", ",") if baseline else None,
        init_from=init_from,
        out_dir=out_dir,
        retrain=retrain,
        acceleration=_acceleration(amp, channels_last, compile_model),
        console=console,
    )
    _exit_if_interrupted(result.stop_signal)
    if result.rows:
        written = ", ".join(str(result.out_dir / name) for name in (COMPARE_FILE, SUMMARY_FILE, "compare.png"))
        console.print(f"wrote {written}")
