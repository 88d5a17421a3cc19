"""Images/s of lovaszseg's training loop and inference against bare PyTorch loops, and CLI start-up time.

Usage:
    python benchmarks/bench_train.py [--data ../shared/tgs] [--repeats 5] [--s1 5] [--s2 20]
        [--test-images 300] [--cli-repeats 7] [--only train,infer,cli]

Everything runs on the CPU with PyTorch's default thread count, on real TGS Salt data (the Kaggle
layout: ``train/images``, ``train/masks``, ``test/images``, ``sample_submission.csv``). The model is
the demo config's: smp ``Unet`` with a ``resnet18`` encoder, ``encoder_weights: null``, decoder
channels ``[64, 32, 16, 16, 8]``, 1 input channel, 1 output channel, images padded 101 -> 128.

Training. lovaszseg is measured through its public API only, ``lovaszseg.training.train(config,
run_dir=..., overwrite=True)`` with one stage of one epoch (BCE, Adam, lr 0.003, no schedule, batch 16,
hflip 0.5, no workers) stopped after ``train.max_steps_per_epoch`` = S1 and = S2 steps; its speed is
``(S2 - S1) * batch / (t(S2) - t(S1))``, so that start-up, validation, checkpoints and the export cancel.
The validation split is kept small with a folds CSV (``data.options.folds_csv``) that puts
``--val-size`` ids in fold 0 (validation) and the rest in folds 1..4. The bare loop reads the same
training ids (PIL, mask > 0) through the same ``tgs_transforms(train=True, pad_size=128, hflip=0.5)``,
a ``DataLoader`` (same batch, shuffle, drop_last, no workers), ``model.train()``, forward,
``binary_cross_entropy_with_logits``, ``zero_grad``, backward, ``Adam.step``, and is timed over steps
S1+1..S2 after S1 untimed warm-up steps. Each repeat runs lovaszseg (S1 then S2) and then the bare loop.
What lovaszseg prints goes to a buffer (not a terminal: no progress bar), for training and inference.

Inference, on the run folder the last S2 training run wrote, with and without hflip TTA:

- ``predict_run(run, images, out, tta=...)`` (loads the model, predicts in batches of 16, writes a
  0/255 mask PNG and an overlay PNG per image) against a bare loop that does the same: builds the
  smp model and loads ``model.safetensors``, reads each image (PIL, grayscale), applies
  ``tgs_transforms(train=False)``, runs batches of 16 under ``torch.no_grad()``, sigmoid (TTA: averaged
  with the flipped prediction), crops to 101x101, thresholds at 0.5 and writes the same two PNGs.
- ``submit_run(run, test_dir, out, tta=...)`` (RLE, validated CSV in ``sample_submission.csv``
  order; batches of 64 before the redesign, 16 after) against the same bare loop with the same batch
  (``--submit-batch``) that RLE-encodes the masks (numpy) and writes the CSV in the sample
  submission's order.

``--test-images N`` uses the first N test ids (a temporary Kaggle-like test folder of symbolic links
and a matching ``sample_submission.csv``) to keep the run short. Times are wall times of the whole
call; the bare inference loop also reports where its own time goes.

Background load. Every lovaszseg measurement and its bare counterpart alternate (A B A B ...). On a
2-core machine that is not enough: one other busy process slows a 2-thread torch loop 3-10x (its
threads wait for each other). So every timed call is watched: the CPU time that other processes took
meanwhile (``/proc/stat`` minus this process and kernel threads) is recorded, and a call during which they used more
than ``--max-foreign`` cores is timed again (up to ``--retries`` times, after waiting up to ``--wait``
seconds for a quiet second). A repeat still under load after that is flagged ``*``, listed, and left out
of the medians; up to ``--extra`` further repeats replace such repeats. The load average (``uptime``)
is printed at the start and the end.

Speed (``--only speed``): the training and ``submit`` images/s of each ``train.amp`` /
``train.channels_last`` / ``train.compile`` setting (``SPEED_SETTINGS``), each as a ratio to the bare
fp32 loop measured in the same repeats (``--speed-repeats``, ``--speed-s1``, ``--speed-s2``); the CPU's
native bf16 support is printed with it. ``--speed-fresh-processes`` times every training run and the bare
loop in a new Python process (as a user's run is) instead of one after another in this one, where what
ran before (a float32 run, a bf16 one) changes the next run's speed by several percent.

CLI: wall time of ``lovaszseg --help`` and ``lovaszseg train --help`` (the ``lovaszseg`` entry point
next to this Python), against ``python -c pass`` and ``python -c "import torch"`` for reference.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import io
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import lovaszseg
from lovaszseg.data.folds import CvSplit
from lovaszseg.data.transforms import tgs_transforms

MODEL = {
    "arch": "Unet",
    "encoder": "resnet18",
    "encoder_weights": None,
    "options": {"decoder_channels": [64, 32, 16, 16, 8]},
}
LR = 0.003
PAD = 128
SIZE = 101
TOP = (PAD - SIZE) // 2  # albumentations' centre padding: 13 above / left, 14 below / right


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "load average {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _fmt_list(values: list[float], digits: int = 1) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


# --------------------------------------------------------------------------------------------------
# Background load: the CPU time other processes take while a measurement runs.


class ForeignLoad:
    """CPU time that other processes took, per second of wall time: about 0 when the machine is
    otherwise idle, 1 when another process keeps a core busy. It is the machine's user + system (+ steal)
    time from ``/proc/stat``, minus this process's and its reaped children's, minus kernel threads'
    (so that the kernel writing this process's checkpoints back to disk does not count). On 2 cores a
    single competing process can slow a 2-thread torch loop several times over, so measurements taken
    under such load are repeated (see ``Guard``)."""

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.start()

    def _kernel_ticks(self) -> int:
        total = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                raw = Path(f"/proc/{entry}/stat").read_text()
            except OSError:  # gone meanwhile
                continue
            fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid ...
            if entry == "2" or fields[1] == "2":  # kthreadd and its children, the kernel threads
                total += int(fields[11]) + int(fields[12])  # utime + stime
        return total

    def _sample(self) -> tuple[float, float, float] | None:
        try:
            cpu = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
            kernel = self._kernel_ticks()
        except (OSError, ValueError, IndexError):
            return None
        user, nice, system, steal = cpu[0], cpu[1], cpu[2], cpu[7]
        own = os.times()
        own_s = own.user + own.system + own.children_user + own.children_system
        return time.perf_counter(), (user + nice + system + steal - kernel) / self.tick, own_s

    def start(self) -> None:
        self.first = self._sample()

    def cores(self) -> float:
        """Average cores used by other processes since :meth:`start` (NaN without ``/proc``)."""
        last = self._sample()
        if self.first is None or last is None:
            return float("nan")
        wall = max(last[0] - self.first[0], 1e-9)
        return max(0.0, (last[1] - self.first[1]) - (last[2] - self.first[2])) / wall


class Guard:
    """Run a measurement (one timed call) again when other processes took more than ``limit`` cores on
    average during it. Before each attempt it waits (up to ``wait_s``) until two consecutive half-second
    windows are quiet; after ``retries`` repeated attempts the last one is kept and flagged."""

    def __init__(self, limit: float, retries: int, wait_s: float) -> None:
        self.limit, self.retries, self.wait_s = limit, retries, wait_s
        self.discarded = 0
        self.meter = ForeignLoad()

    def wait_quiet(self) -> None:
        deadline, quiet = time.perf_counter() + self.wait_s, 0
        while quiet < 2 and time.perf_counter() < deadline:
            self.meter.start()
            time.sleep(0.5)
            load = self.meter.cores()
            quiet = 0 if load > self.limit else quiet + 1  # NaN (no /proc/stat) counts as quiet

    def run(self, measure: Callable[[], object], label: str) -> tuple[object, float, bool]:
        """``(result, foreign cores, clean)``."""
        for attempt in range(self.retries + 1):
            self.wait_quiet()
            self.meter.start()
            result = measure()
            load = self.meter.cores()
            if not load > self.limit:
                return result, load, True
            if attempt < self.retries:
                self.discarded += 1
                print(f"  {label}: other processes used {load:.2f} cores, measuring again", flush=True)
        return result, load, False


def _flag(clean: bool) -> str:
    return "" if clean else "*"


def _series(records: list[dict], key: str, digits: int = 1) -> str:
    """The values of one key over the repeats, those taken under background load flagged *."""
    return ", ".join(f"{r[key]:.{digits}f}{_flag(r['clean'])}" for r in records)


def _unclean_note(records: list[dict]) -> str:
    unclean = sum(not r["clean"] for r in records)
    if not unclean:
        return ""
    if unclean == len(records):
        return f" (all {unclean} taken under background load, flagged *)"
    return f" taken on a quiet machine ({unclean} more taken under load, flagged * and left out)"


# --------------------------------------------------------------------------------------------------
# Data: the ids of the training split and a folds CSV with a small validation fold.


def _train_ids(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "train" / "images").glob("*.png"))


def write_folds_csv(root: Path, path: Path, val_size: int) -> tuple[list[str], list[str]]:
    """Fold 0 (validation): every ``len/val_size``-th id; the others dealt to folds 1..4."""
    ids = _train_ids(root)
    step = max(1, len(ids) // val_size)
    val = set(ids[::step][:val_size])
    split = CvSplit({i: 0 if i in val else 1 + index % 4 for index, i in enumerate(ids)}, [], 5)
    lovaszseg.data.folds.write_folds_csv(path, split)  # the CSV every TGS folds_csv option reads
    return split.train_ids(0), split.val_ids(0)


class BareTGS(Dataset):
    """Image and binary mask of each id through a transform: what a bare script would write."""

    def __init__(self, root: Path, ids: list[str], transform: Callable) -> None:
        self.root, self.ids, self.transform = root, ids, transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample_id = self.ids[index]
        image = np.asarray(Image.open(self.root / "train" / "images" / f"{sample_id}.png").convert("L"))
        mask = (np.asarray(Image.open(self.root / "train" / "masks" / f"{sample_id}.png")) > 0).astype(np.uint8)
        out = self.transform(image=image, mask=mask)
        return out["image"], out["mask"]


def _bare_model() -> torch.nn.Module:
    return smp.create_model(
        MODEL["arch"],
        encoder_name=MODEL["encoder"],
        encoder_weights=None,
        in_channels=1,
        classes=1,
        **MODEL["options"],
    )


# --------------------------------------------------------------------------------------------------
# Training


def lovaszseg_config(
    root: Path, folds_csv: Path, runs_dir: Path, batch: int, steps: int, train: dict | None = None
) -> object:
    """The benchmark's config; ``train`` adds ``train.*`` settings (``amp``, ``channels_last``, ``compile``) and
    ``num_workers``, the data loader's worker processes (``data.num_workers``, default none)."""
    from lovaszseg.config import load_config

    train = dict(train or {})
    workers = train.pop("num_workers", 0)
    return load_config(
        {
            "model": MODEL,
            "data": {
                "name": "tgs",
                "root": str(root),
                "batch_size": batch,
                "num_workers": workers,
                "options": {"fold": 0, "folds_csv": str(folds_csv), "pad_size": PAD, "hflip": 0.5},
            },
            "stages": [{"name": "bce", "loss": "bce", "epochs": 1, "optimizer": "adam", "lr": LR, "schedule": "none"}],
            "train": {"seed": 0, "device": "cpu", "max_steps_per_epoch": steps, **train},
            "output": {"runs_dir": str(runs_dir), "name": "bench"},
        }
    )


def time_lovaszseg_train(
    root: Path, folds_csv: Path, run_dir: Path, batch: int, steps: int, settings: dict | None = None
) -> float:
    from lovaszseg.training import train

    config = lovaszseg_config(root, folds_csv, run_dir.parent, batch, steps, settings)
    log = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(log):  # rich's Console writes to sys.stdout: not a terminal, no bar
        train(config, run_dir=run_dir, overwrite=True)
    return time.perf_counter() - start


def time_bare_train(dataset: Dataset, batch: int, s1: int, s2: int, seed: int) -> float:
    """Seconds for steps s1+1..s2 of a fresh model and Adam (steps 1..s1 are warm-up)."""
    torch.manual_seed(seed)
    model = _bare_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0, drop_last=True)
    model.train()
    start = time.perf_counter()  # s1 == 0: steps 1..s2, loader start included
    step = 0
    for images, masks in loader:
        logits = model(images)
        loss = F.binary_cross_entropy_with_logits(logits[:, 0], masks.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step == s1:
            start = time.perf_counter()
        if step == s2:
            break
    if step < s2:
        raise SystemExit(f"the training split has only {step} batches of {batch}; lower --s2")
    return time.perf_counter() - start


def bench_train(args: argparse.Namespace, work: Path, guard: Guard) -> tuple[list[str], Path]:
    root, batch, s1, s2 = args.data, args.batch, args.s1, args.s2
    folds_csv = work / "folds.csv"
    train_ids, val_ids = write_folds_csv(root, folds_csv, args.val_size)
    dataset = BareTGS(root, train_ids, tgs_transforms(train=True, pad_size=PAD, hflip=0.5))
    runs = work / "runs"
    run_s1, run_s2 = runs / "s1", runs / "s2"
    # Warm-up, untimed: imports (matplotlib in the curves plot), oneDNN kernels, the page cache.
    time_lovaszseg_train(root, folds_csv, run_s1, batch, 2)
    time_bare_train(dataset, batch, 0, 2, seed=0)

    records: list[dict[str, float]] = []
    while sum(r["clean"] for r in records) < args.repeats and len(records) < args.repeats + args.extra:
        label = f"train repeat {len(records) + 1}"
        t1, load1, clean1 = guard.run(lambda: time_lovaszseg_train(root, folds_csv, run_s1, batch, s1), label)
        t2, load2, clean2 = guard.run(lambda: time_lovaszseg_train(root, folds_csv, run_s2, batch, s2), label)
        tb, load3, clean3 = guard.run(lambda r=len(records): time_bare_train(dataset, batch, s1, s2, seed=r), label)
        record = {
            "t1": t1,
            "t2": t2,
            "tb": tb,
            "ours": (s2 - s1) * batch / (t2 - t1),
            "bare": (s2 - s1) * batch / tb,
            "load": max(load1, load2, load3),
            "clean": clean1 and clean2 and clean3,
        }
        records.append(record)
        print(
            f"  {label}: lovaszseg t(S1) {t1:.2f} s, t(S2) {t2:.2f} s, bare {tb:.2f} s, "
            f"other processes {record['load']:.2f} cores{_flag(record['clean'])}",
            flush=True,
        )
    kept = [r for r in records if r["clean"]] or records
    ours_m, bare_m = _median([r["ours"] for r in kept]), _median([r["bare"] for r in kept])
    t1_m = _median([r["t1"] for r in kept])
    fixed = t1_m - s1 * batch / ours_m

    def listing(key: str, digits: int = 1) -> str:
        return _series(records, key, digits)

    for r in records:
        r["ratio"] = r["ours"] / r["bare"]
    lines = [
        f"Training: {len(train_ids)} training ids, {len(val_ids)} validation ids (fold 0 of a folds CSV), "
        f"batch {batch}, S1 = {s1}, S2 = {s2} steps; median of {len(kept)} repeats{_unclean_note(records)}\n",
        "| loop | images/s (median) | per repeat | seconds per step |",
        "|---|---:|---|---:|",
        f"| lovaszseg `training.train`: (S2 - S1) * batch / (t(S2) - t(S1)) | {ours_m:.1f} | {listing('ours')} "
        f"| {batch / ours_m:.3f} |",
        f"| bare PyTorch loop, steps S1+1..S2 | {bare_m:.1f} | {listing('bare')} | {batch / bare_m:.3f} |",
        f"| **lovaszseg / bare** | **{ours_m / bare_m:.2f}** | {listing('ratio', 2)} | |",
        "",
        f"Other processes during each repeat (cores): {listing('load', 2)}.",
        f"lovaszseg wall time per call: t(S1) median {t1_m:.2f} s ({listing('t1', 2)}), "
        f"t(S2) median {_median([r['t2'] for r in kept]):.2f} s ({listing('t2', 2)}); fixed cost of a call "
        f"(t(S1) minus S1 steps at the median speed): {fixed:.2f} s. Bare loop, S2 - S1 steps: median "
        f"{_median([r['tb'] for r in kept]):.2f} s.",
    ]
    return lines, run_s2


# --------------------------------------------------------------------------------------------------
# Inference


def rle_encode(mask: np.ndarray) -> str:
    """Kaggle RLE: column-major, 1-indexed ``start length`` pairs."""
    flat = np.concatenate([[0], mask.T.reshape(-1).astype(np.int8), [0]])
    runs = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs[1::2] -= runs[::2]
    return " ".join(map(str, runs))


def _overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image in grey with the mask blended in red (alpha 0.45), as lovaszseg's overlay."""
    rgb = np.repeat(image[..., None], 3, axis=2).astype(np.float32)
    red = np.array([128.0, 0.0, 0.0], dtype=np.float32)  # VOC colour of class 1
    rgb[mask] = 0.55 * rgb[mask] + 0.45 * red
    return rgb.round().astype(np.uint8)


class Phases:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@torch.no_grad()
def bare_inference(
    run: Path,
    images_dir: Path,
    batch: int,
    tta: str,
    out_dir: Path | None,
    csv_out: Path | None,
    order: list[str] | None,
    phases: Phases,
) -> int:
    """Load, predict, threshold; write mask + overlay PNGs (``out_dir``) or a submission (``csv_out``)."""
    from safetensors.torch import load_file

    with phases("load model"):
        model = _bare_model()
        model.load_state_dict(load_file(str(run / "model.safetensors")))
        model.eval()
    transform = tgs_transforms(train=False, pad_size=PAD)
    paths = sorted(images_dir.glob("*.png"))
    if out_dir is not None:
        (out_dir / "masks").mkdir(parents=True, exist_ok=True)
        (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    rles: dict[str, str] = {}
    for first in range(0, len(paths), batch):
        chunk = paths[first : first + batch]
        with phases("read + transform"):
            images = [np.asarray(Image.open(p).convert("L")) for p in chunk]
            tensor = torch.stack([transform(image=image)["image"] for image in images])
        with phases("forward"):
            probs = model(tensor).sigmoid()
            if tta == "hflip":
                probs = (probs + model(tensor.flip(-1)).sigmoid().flip(-1)) / 2
        with phases("write" if out_dir is not None else "rle"):
            masks = (probs[:, 0, TOP : TOP + SIZE, TOP : TOP + SIZE] > 0.5).numpy()
            for path, image, mask in zip(chunk, images, masks, strict=True):
                if out_dir is not None:
                    Image.fromarray(mask.astype(np.uint8) * 255).save(out_dir / "masks" / f"{path.stem}.png")
                    Image.fromarray(_overlay(image, mask)).save(out_dir / "overlays" / f"{path.stem}.png")
                else:
                    rles[path.stem] = rle_encode(mask)
    if csv_out is not None:
        with phases("rle"), csv_out.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "rle_mask"])
            writer.writerows((i, rles[i]) for i in (order or sorted(rles)))
    return len(paths)


def make_test_dir(root: Path, work: Path, count: int) -> tuple[Path, list[str]]:
    """A Kaggle-like ``test/`` with the first ``count`` ids of sample_submission.csv (or root's own)."""
    with (root / "sample_submission.csv").open(newline="") as handle:
        order = [row["id"] for row in csv.DictReader(handle)]
    if count >= len(order):
        return root / "test", order
    subset = work / "tgs-subset"
    (subset / "test" / "images").mkdir(parents=True)
    order = order[:count]
    for sample_id in order:
        (subset / "test" / "images" / f"{sample_id}.png").symlink_to(root / "test" / "images" / f"{sample_id}.png")
    with (subset / "sample_submission.csv").open("w", newline="") as handle:
        handle.write("id,rle_mask\n")
        handle.writelines(f"{sample_id},1 1\n" for sample_id in order)
    return subset / "test", order


def bench_infer(args: argparse.Namespace, work: Path, run: Path, guard: Guard) -> list[str]:
    from safetensors.torch import load_file

    from lovaszseg.storage.run_folder import load_model
    from lovaszseg.workflows.runs import predict_run, submit_run

    test_dir, order = make_test_dir(args.data, work, args.test_images)
    images_dir = test_dir / "images"
    count = len(order)
    out = work / "out"

    def fresh(path: Path) -> Path:
        shutil.rmtree(path, ignore_errors=True)
        return path

    def bare_load() -> None:
        model = _bare_model()
        model.load_state_dict(load_file(str(run / "model.safetensors")))
        model.eval()

    # name -> (lovaszseg call, bare call taking a Phases); the output folders are removed untimed.
    cases: dict[str, tuple[Callable[[], object], Callable[[Phases], object], Callable[[], object]]] = {}
    for tta in ("none", "hflip"):
        cases[f"predict, tta {tta} (batch 16, mask + overlay PNGs)"] = (
            lambda tta=tta: predict_run(run, images_dir, out / "ours", tta=tta),
            lambda p, tta=tta: bare_inference(run, images_dir, 16, tta, out / "bare", None, None, p),
            lambda: (fresh(out / "ours"), fresh(out / "bare")),
        )
    for tta in ("none", "hflip"):
        cases[f"submit, tta {tta} (batch {args.submit_batch}, RLE CSV)"] = (
            lambda tta=tta: submit_run(run, test_dir, out / "ours.csv", tta=tta),
            lambda p, tta=tta: bare_inference(
                run, images_dir, args.submit_batch, tta, None, out / "bare.csv", order, p
            ),
            lambda: None,
        )
    cases["model loading only (`storage.run_folder.load_model` / smp + model.safetensors)"] = (
        lambda: load_model(run),
        lambda p: bare_load(),
        lambda: None,
    )
    # Warm-up, untimed: first forward passes, the page cache of the images and of the run folder.
    fresh(out)
    with contextlib.redirect_stdout(io.StringIO()):
        predict_run(run, images_dir, out / "ours", tta="none")
    bare_inference(run, images_dir, 16, "none", out / "bare", None, None, Phases())

    def timed(call: Callable[[], object]) -> float:
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # progress lines, if the version prints any
            call()
        return time.perf_counter() - start

    def timed_bare(call: Callable[[Phases], object]) -> tuple[float, Phases]:
        phases = Phases()
        return timed(lambda: call(phases)), phases

    results: dict[str, list[dict]] = {name: [] for name in cases}

    def missing(name: str) -> bool:
        records = results[name]
        return sum(r["clean"] for r in records) < args.repeats and len(records) < args.repeats + args.extra

    round_ = 0
    while any(missing(name) for name in cases):
        round_ += 1
        for name, (ours, bare, clean_up) in cases.items():
            if not missing(name):
                continue
            label = f"inference round {round_}, {name}"
            t_ours, load1, clean1 = guard.run(lambda o=ours, c=clean_up: (c(), timed(o))[1], label)
            (t_bare, phases), load2, clean2 = guard.run(lambda b=bare, c=clean_up: (c(), timed_bare(b))[1], label)
            results[name].append(
                {
                    "ours": t_ours,
                    "bare": t_bare,
                    "phases": phases,
                    "load": max(load1, load2),
                    "clean": clean1 and clean2,
                }
            )
        done = "; ".join(f"{r[-1]['ours']:.2f}/{r[-1]['bare']:.2f} s{_flag(r[-1]['clean'])}" for r in results.values())
        print(f"  inference round {round_}: lovaszseg/bare (last) {done}", flush=True)

    lines = [
        f"Inference: {count} test images, model = the run folder of the last S2 training run; median of "
        f"{args.repeats} repeats taken on a quiet machine (unless flagged); wall time of the whole call, "
        "model loading included\n",
        "| case | lovaszseg (images/s) | bare PyTorch (images/s) | lovaszseg / bare | lovaszseg s | bare s "
        "| bare: load / read+transform / forward / write or RLE (s) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, records in results.items():
        kept = [r for r in records if r["clean"]] or records
        t_ours, t_bare = _median([r["ours"] for r in kept]), _median([r["bare"] for r in kept])
        flag = "" if kept[0]["clean"] else " *"
        if name.startswith("model loading"):
            lines.append(f"| {name}{flag} | | | {t_ours / t_bare:.2f}x the time | {t_ours:.3f} | {t_bare:.3f} | |")
            continue
        o, b = count / t_ours, count / t_bare
        keys = ("load model", "read + transform", "forward")
        split = [_median([r["phases"].seconds.get(k, 0.0) for r in kept]) for k in keys]
        tail = _median([r["phases"].seconds.get("write", 0.0) + r["phases"].seconds.get("rle", 0.0) for r in kept])
        lines.append(
            f"| {name}{flag} | {o:.1f} | {b:.1f} | **{o / b:.2f}** | {t_ours:.2f} | {t_bare:.2f} "
            f"| {' / '.join(f'{v:.2f}' for v in split)} / {tail:.2f} |"
        )
    lines.append("")
    for name, records in results.items():
        lines.append(
            f"{name.split(' (')[0]}: lovaszseg s {_series(records, 'ours', 2)}; bare s {_series(records, 'bare', 2)}; "
            f"other processes (cores) {_series(records, 'load', 2)}"
        )
    lines += [
        "Run folder files: "
        + ", ".join(
            f"{p.name} {p.stat().st_size / 1e6:.0f} MB"
            for p in sorted(run.iterdir())
            if p.suffix in (".pt", ".safetensors")
        ),
    ]
    return lines


# --------------------------------------------------------------------------------------------------
# Speed settings: amp, channels-last and torch.compile against the bare fp32 loop

# name -> train.* settings; "recommended" is what docs/benchmarks.md recommends for a CPU.
SPEED_SETTINGS: dict[str, dict] = {
    "fp32": {},
    "bf16": {"amp": "bf16"},
    "channels-last": {"channels_last": True},
    "bf16 + channels-last": {"amp": "bf16", "channels_last": True},
    "compiled channels-last": {"channels_last": True, "compile": True},
    # What docs/benchmarks.md recommends: bf16 only where the CPU or GPU has it natively.
    "amp auto + channels-last": {"amp": "auto", "channels_last": True},
    "compiled amp auto + channels-last": {"amp": "auto", "channels_last": True, "compile": True},
    # The docs' CPU configs also load batches in one worker process (data.num_workers: 1), beside the model's
    # threads; training only (submit reads its images in the main process).
    "amp auto + channels-last + 1 worker": {"amp": "auto", "channels_last": True, "num_workers": 1},
}


def _bare_train_of_ids(
    decoder: list[int], root: Path, ids: list[str], batch: int, s1: int, s2: int, seed: int
) -> float:
    """:func:`time_bare_train` on the training ids, with the model's decoder (for a fresh process)."""
    MODEL["options"]["decoder_channels"] = decoder
    dataset = BareTGS(root, ids, tgs_transforms(train=True, pad_size=PAD, hflip=0.5))
    return time_bare_train(dataset, batch, s1, s2, seed)


def _lovaszseg_train_with(decoder: list[int], *args: object) -> float:
    """:func:`time_lovaszseg_train` with the model's decoder (for a fresh process)."""
    MODEL["options"]["decoder_channels"] = decoder
    return time_lovaszseg_train(*args)  # type: ignore[arg-type]


def _in_fresh_process(function: Callable[..., float], *args: object) -> float:
    """``function(*args)`` in a new Python process: nothing an earlier measurement left (kernel caches,
    allocator state) is shared; each process pays its start and first steps, which S2 - S1 cancels."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def _speed_train(args: argparse.Namespace, work: Path, guard: Guard, names: list[str]) -> tuple[list[str], Path]:
    """Training images/s of each setting ((S2 - S1) steps, as ``bench_train``) over the bare fp32 loop's."""
    root, batch, s1, s2 = args.data, args.batch, args.speed_s1, args.speed_s2
    folds_csv = work / "folds.csv"
    train_ids, _ = write_folds_csv(root, folds_csv, args.val_size)
    decoder = MODEL["options"]["decoder_channels"]
    run = _in_fresh_process if args.speed_fresh_processes else (lambda function, *arguments: function(*arguments))

    def bare(first: int, last: int, seed: int) -> float:
        return run(_bare_train_of_ids, decoder, root, train_ids, batch, first, last, seed)

    def ours(folder: str, steps: int, settings: dict) -> float:
        return run(_lovaszseg_train_with, decoder, root, folds_csv, runs / folder, batch, steps, settings)

    runs = work / "speed-runs"
    for name in names:  # warm-up, untimed: kernels, the compiler's caches, the page cache
        ours("warm", 2, SPEED_SETTINGS[name])
    bare(0, 2, seed=0)
    speeds: dict[str, list[float]] = {name: [] for name in ["bare fp32 loop", *names]}
    flagged = 0
    for repeat in range(args.speed_repeats):
        label = f"speed repeat {repeat + 1}"
        seconds, _, clean = guard.run(lambda r=repeat: bare(s1, s2, seed=r), label)
        flagged += not clean
        speeds["bare fp32 loop"].append((s2 - s1) * batch / seconds)
        for name in names:
            settings = SPEED_SETTINGS[name]
            t1, _, clean1 = guard.run(lambda st=settings: ours("s1", s1, st), label)
            t2, _, clean2 = guard.run(lambda st=settings: ours("s2", s2, st), label)
            flagged += not (clean1 and clean2)
            speeds[name].append((s2 - s1) * batch / (t2 - t1))
        shown = ", ".join(f"{name} {values[-1]:.1f}" for name, values in speeds.items())
        print(f"  {label} (images/s): {shown}", flush=True)
    bare_m = _median(speeds["bare fp32 loop"])
    lines = [
        f"Training speed: batch {batch}, steps S1 = {s1}, S2 = {s2}, images/s = (S2 - S1) * batch / (t(S2) - t(S1)) "
        f"of lovaszseg's train(); median of {args.speed_repeats} repeats, settings interleaved"
        f"{', every run in a new process' if args.speed_fresh_processes else ', in this process'}; "
        f"{flagged} measurement(s) under background load\n",
        "| setting (`train.*`) | images/s (median) | per repeat | / bare fp32 loop |",
        "|---|---:|---|---:|",
    ]
    for name, values in speeds.items():
        lines.append(f"| {name} | {_median(values):.1f} | {_fmt_list(values)} | **{_median(values) / bare_m:.2f}** |")
    run = runs / "fp32-model"
    time_lovaszseg_train(root, folds_csv, run, batch, s2)  # the model inference predicts with
    return lines, run


def _speed_infer(args: argparse.Namespace, work: Path, run: Path, guard: Guard, names: list[str]) -> list[str]:
    """``submit_run`` images/s of each setting, with and without hflip, over the bare fp32 submit loop's."""
    from lovaszseg.runtime.acceleration import AccelerationOverride
    from lovaszseg.workflows.runs import submit_run

    test_dir, order = make_test_dir(args.data, work, args.test_images)
    images_dir, count = test_dir / "images", len(order)

    def submit(tta: str, settings: dict) -> float:
        override = AccelerationOverride(
            amp=settings.get("amp", "none"),
            channels_last=settings.get("channels_last", False),
            compile=settings.get("compile", False),
        )
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            submit_run(run, test_dir, work / "speed.csv", tta=tta, acceleration=override)
        return count / (time.perf_counter() - start)

    def bare(tta: str) -> float:
        start = time.perf_counter()
        bare_inference(run, images_dir, args.submit_batch, tta, None, work / "bare.csv", order, Phases())
        return count / (time.perf_counter() - start)

    lines = [
        f"Inference speed: `submit_run` on {count} test images (wall time of the whole call: loading, "
        f"compiling where asked, predicting, RLE), against the bare fp32 submit loop (batch {args.submit_batch}); "
        f"median of {args.speed_repeats} repeats\n",
        "| setting (`--amp`, `--channels-last`, `--compile`) | tta | images/s (median) | per repeat | / bare fp32 |",
        "|---|---|---:|---|---:|",
    ]
    for tta in ("none", "hflip"):
        for name in names:  # warm-up, untimed
            submit(tta, SPEED_SETTINGS[name])
        speeds: dict[str, list[float]] = {name: [] for name in ["bare fp32 loop", *names]}
        for repeat in range(args.speed_repeats):
            label = f"speed inference, tta {tta}, repeat {repeat + 1}"
            speeds["bare fp32 loop"].append(guard.run(lambda t=tta: bare(t), label)[0])
            for name in names:
                speeds[name].append(guard.run(lambda t=tta, n=name: submit(t, SPEED_SETTINGS[n]), label)[0])
        bare_m = _median(speeds["bare fp32 loop"])
        for name, values in speeds.items():
            lines.append(
                f"| {name} | {tta} | {_median(values):.1f} | {_fmt_list(values)} | **{_median(values) / bare_m:.2f}** |"
            )
        print(f"  inference, tta {tta}: done", flush=True)
    return lines


def bench_speed(args: argparse.Namespace, work: Path, guard: Guard) -> list[str]:
    from lovaszseg.runtime.accelerated import native_bf16

    names = [n.strip() for n in args.settings.split(",")] if args.settings else list(SPEED_SETTINGS)
    if unknown := [n for n in names if n not in SPEED_SETTINGS]:
        raise SystemExit(f"unknown --settings {unknown}; choose from {list(SPEED_SETTINGS)}")
    capability = torch.backends.cpu.get_cpu_capability()
    header = [
        f"CPU capability {capability} (ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', 'unset')}), "
        f"native bf16 (AVX-512 BF16 or AMX): {native_bf16(torch.device('cpu'))}; amp auto is "
        f"{'bf16' if native_bf16(torch.device('cpu')) else 'fp32'} here\n",
    ]
    train_lines, run = _speed_train(args, work, guard, names)
    inference = [name for name in names if "num_workers" not in SPEED_SETTINGS[name]]  # the same as without
    return [*header, *train_lines, "", *_speed_infer(args, work, run, guard, inference)]


# --------------------------------------------------------------------------------------------------
# CLI start-up


def bench_cli(args: argparse.Namespace, guard: Guard) -> list[str]:
    entry = Path(sys.executable).parent / "lovaszseg"
    python = sys.executable
    env = dict(os.environ)
    where = subprocess.run(
        [python, "-c", "import lovaszseg; print(lovaszseg.__file__)"], capture_output=True, text=True, env=env
    ).stdout.strip()
    commands = [
        ("lovaszseg --help", [str(entry), "--help"]),
        ("lovaszseg train --help", [str(entry), "train", "--help"]),
        ("python -c pass (reference)", [python, "-c", "pass"]),
        ('python -c "import torch" (reference)', [python, "-c", "import torch"]),
    ]
    for _, command in commands:  # warm-up: page cache, .pyc files
        subprocess.run(command, capture_output=True, env=env, check=True)

    def timed(command: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, env=env, check=True)
        return time.perf_counter() - start

    times: dict[str, list[tuple[float, bool]]] = {name: [] for name, _ in commands}
    for repeat in range(args.cli_repeats):
        for name, command in commands:
            value, _, clean = guard.run(lambda c=command: timed(c), f"CLI repeat {repeat + 1}, {name}")
            times[name].append((value, clean))
    unclean = sum(not clean for values in times.values() for _, clean in values)
    total = sum(len(values) for values in times.values())
    note = ""
    if unclean:
        note = f"; {unclean} of {total} runs still under background load after the retries, " + (
            "kept (all were)" if unclean == total else "left out"
        )
    lines = [
        f"CLI start-up: {entry} (imports lovaszseg from {where}), median of {args.cli_repeats} runs, "
        f"commands interleaved{note}\n",
        "| command | wall time (s, median) | min | max |",
        "|---|---:|---:|---:|",
    ]
    for name, pairs in times.items():
        values = [v for v, clean in pairs if clean] or [v for v, _ in pairs]
        lines.append(f"| `{name}` | {_median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")
    return lines


# --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = Path(__file__).resolve().parents[2] / "shared" / "tgs"
    parser.add_argument("--data", type=Path, default=default_data, help="TGS Salt root (Kaggle layout)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of each training / inference measurement")
    parser.add_argument("--batch", type=int, default=16, help="training batch size")
    parser.add_argument(
        "--s1", type=int, default=5, help="training steps of the short lovaszseg run (and bare warm-up)"
    )
    parser.add_argument("--s2", type=int, default=20, help="training steps of the long lovaszseg run")
    parser.add_argument("--val-size", type=int, default=32, help="validation ids (fold 0 of the folds CSV)")
    parser.add_argument("--test-images", type=int, default=300, help="test images for inference (at most 1000)")
    parser.add_argument(
        "--submit-batch", type=int, default=16, help="bare submit loop's batch: submit_run's (64 before the redesign)"
    )
    parser.add_argument("--cli-repeats", type=int, default=7, help="runs of each CLI command")
    parser.add_argument("--only", default="train,infer,cli", help="comma-separated sections: train, infer, cli, speed")
    parser.add_argument("--settings", default="", help="speed: comma-separated setting names (default: all)")
    parser.add_argument("--speed-repeats", type=int, default=3, help="speed: repeats of each setting")
    parser.add_argument(
        "--speed-fresh-processes",
        action="store_true",
        help="speed: time every training run (and the bare loop) in a new Python process, as a user's run is",
    )
    parser.add_argument("--speed-s1", type=int, default=3, help="speed: steps of the short training run")
    parser.add_argument("--speed-s2", type=int, default=11, help="speed: steps of the long training run")
    parser.add_argument(
        "--max-foreign", type=float, default=0.2, help="cores other processes may use during a measurement"
    )
    parser.add_argument("--retries", type=int, default=3, help="re-measurements of a call timed under load")
    parser.add_argument(
        "--extra", type=int, default=3, help="further repeats allowed to replace repeats taken under load"
    )
    parser.add_argument("--wait", type=float, default=180.0, help="seconds to wait for a quiet machine first")
    parser.add_argument("--keep", type=Path, default=None, help="work folder to use and keep (default: a temp dir)")
    parser.add_argument(
        "--decoder-channels",
        default=",".join(map(str, MODEL["options"]["decoder_channels"])),
        help="the UNet decoder's channels, comma-separated (issue 20's targets were set on 128,64,32,16,16)",
    )
    args = parser.parse_args()
    MODEL["options"]["decoder_channels"] = [int(c) for c in args.decoder_channels.split(",")]
    args.data = args.data.resolve()  # the test subset links to it from a temporary folder
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    if not 0 <= args.s1 < args.s2:
        parser.error("need 0 <= --s1 < --s2")

    print(f"# bench_train ({time.strftime('%Y-%m-%d %H:%M:%S')})\n")
    print("command: python " + " ".join(sys.argv))
    print(f"lovaszseg {getattr(lovaszseg, '__version__', '?')} from {Path(lovaszseg.__file__).parent}")
    print(
        f"torch {torch.__version__}, segmentation-models-pytorch {smp.__version__}, "
        f"Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs ({_cpu_name()}), torch threads {torch.get_num_threads()} (default)"
    )
    print(
        f"model: smp {MODEL['arch']} {MODEL['encoder']}, encoder_weights None, decoder_channels "
        f"{MODEL['options']['decoder_channels']}, 1 -> 1 channels, 101x101 padded to {PAD}x{PAD}; data {args.data}"
    )
    print(f"start: {_uptime()}\n", flush=True)
    started = time.perf_counter()
    guard = Guard(args.max_foreign, args.retries, args.wait)
    work_ctx = contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory(prefix="bench_train_")
    with work_ctx as work_name:
        work = Path(work_name)
        work.mkdir(parents=True, exist_ok=True)
        run: Path | None = None
        if "train" in sections:
            lines, run = bench_train(args, work, guard)
            print("\n".join(["", *lines]) + "\n", flush=True)
        if "infer" in sections:
            if run is None:  # a run folder to predict with: one S2 run
                folds_csv = work / "folds.csv"
                write_folds_csv(args.data, folds_csv, args.val_size)
                run = work / "runs" / "s2"
                time_lovaszseg_train(args.data, folds_csv, run, args.batch, args.s2)
            lines = bench_infer(args, work, run, guard)
            print("\n".join(["", *lines]) + "\n", flush=True)
        if "speed" in sections:
            lines = bench_speed(args, work, guard)
            print("\n".join(["", *lines]) + "\n", flush=True)
        if "cli" in sections:
            lines = bench_cli(args, guard)
            print("\n".join(["", *lines]) + "\n", flush=True)
    print(
        f"Measurements repeated because other processes used more than {args.max_foreign} cores: "
        f"{guard.discarded} (flagged *: kept although under load)"
    )
    print(f"end: {_uptime()}; total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
