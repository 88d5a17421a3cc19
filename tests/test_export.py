"""lovaszseg export: ONNX checked against PyTorch on real TGS images, smp's from_pretrained round trip, the
registry of formats, and destinations refused before any work."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from lovaszseg.cli import app
from lovaszseg.config import CONFIG_METADATA_KEY, load_config
from lovaszseg.data import build_transform, describe_dataset
from lovaszseg.data.io import list_stems, read_image
from lovaszseg.decoders import DEEP_HEADS
from lovaszseg.errors import CheckpointError, ConfigError, OutputError
from lovaszseg.inference import export
from lovaszseg.inference.export import (
    EXPORT_FORMATS,
    ONNX_OPSET,
    Exporter,
    ExportResult,
    export_run,
    model_usage,
    register_exporter,
)
from lovaszseg.inference.predict import probabilities
from lovaszseg.models import build_model
from lovaszseg.storage.run_folder import LoadedModel, RunFolder, load_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

runner = CliRunner()
_TINY_UNET = {
    "encoder": "resnet18",
    "encoder_weights": None,
    "options": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]},
}
_TINY_PSPNET = {"arch": "PSPNet", "encoder": "resnet18", "encoder_weights": None, "options": {"psp_out_channels": 16}}


def _make_run(path: Path, model: dict) -> Path:
    """A finished-looking run folder whose model.safetensors holds a randomly initialised model (seed 0)."""
    config = load_config({"model": model, "data": {"name": "tgs"}, "output": {"name": "export"}})
    spec = describe_dataset(config.data.name, config.data.options)
    torch.manual_seed(0)
    network = build_model(config.model, spec.in_channels, spec.num_classes, pretrained=False)
    folder = RunFolder.create(config, path)
    folder.export({"model": network.state_dict()}, config)
    folder.release()
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_run(tmp_path_factory.mktemp("export") / "run", _TINY_UNET)


@pytest.fixture(scope="module")
def onnx_export(run: Path) -> ExportResult:
    """The run's ONNX export, written with --overwrite over an older file (one export for the module)."""
    out = run.parent / "model.onnx"
    out.write_bytes(b"an older export")
    return export_run(run, "onnx", out, overwrite=True)


def _tgs_batch(shared_dir: Path, run: Path, count: int) -> np.ndarray:
    """``count`` real TGS training images, prepared by the run's evaluation preset: [count, 1, 128, 128]."""
    config = load_model(run).config
    transform = build_transform("tgs", train=False, **config.data.options)
    paths = list(list_stems(shared_dir / "tgs" / "train" / "images").values())[:count]
    return np.stack([transform(image=read_image(path, channels=1))["image"].numpy() for path in paths])


def test_onnx_matches_pytorch_on_real_tgs_images_with_a_dynamic_batch(
    onnx_export: ExportResult, run: Path, shared_dir: Path
) -> None:
    images = _tgs_batch(shared_dir, run, 5)
    model = load_model(run).model
    session = ort.InferenceSession(str(onnx_export.path), providers=["CPUExecutionProvider"])
    for batch in (images[:1], images, np.ascontiguousarray(images[:, :, 8:104, 16:88])):  # 1, 5, another size
        (logits,) = session.run(["logits"], {"images": batch})
        onnx_probs = probabilities(torch.from_numpy(logits))
        with torch.inference_mode():
            torch_probs = probabilities(model(torch.from_numpy(batch)))
        assert onnx_probs.shape == torch_probs.shape == (len(batch), 1, *batch.shape[-2:])
        assert (onnx_probs - torch_probs).abs().max() <= 1e-4
        assert ((torch_probs > 0.01) & (torch_probs < 0.99)).float().mean() > 0.5  # not saturated: a real check
    assert onnx_export.max_difference is not None and onnx_export.max_difference <= 1e-4


def test_onnx_file_states_its_opset_names_axes_and_how_to_use_it(onnx_export: ExportResult, run: Path) -> None:
    model = onnx.load(str(onnx_export.path))
    assert [(o.domain, o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")] == [("", ONNX_OPSET)]
    (images,), (logits,) = model.graph.input, model.graph.output
    dims = [d.dim_param or d.dim_value for d in images.type.tensor_type.shape.dim]
    assert (images.name, logits.name) == ("images", "logits") and dims == ["batch", 1, "height", "width"]
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    config = metadata.pop(CONFIG_METADATA_KEY)
    assert load_config(yaml.safe_load(config)) == load_model(run).config
    assert metadata == {**onnx_export.usage, "source": str(run / "model.safetensors")}
    assert (metadata["input_size"], metadata["mean"], metadata["std"]) == ("128x128", "0.473", "0.161")
    assert metadata["activation"].startswith("sigmoid") and "101x101" in metadata["crop"]
    assert (metadata["opset"], metadata["dynamic_axes"]) == (str(ONNX_OPSET), "batch, height, width")


def test_a_graph_that_holds_one_size_is_exported_at_the_preset_size(tmp_path: Path) -> None:
    # PSPNet's adaptive pooling exports with dynamic sides but fails at any other size in onnxruntime.
    result = export_run(_make_run(tmp_path / "psp", _TINY_PSPNET), "onnx", tmp_path / "psp.onnx")
    assert result.usage["dynamic_axes"] == "batch" and result.usage["input_size"].startswith("128x128 (fixed")
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": np.zeros((3, 1, 128, 128), dtype=np.float32)})
    assert logits.shape == (3, 1, 128, 128)


def test_smp_export_loads_with_from_pretrained_and_gives_the_same_outputs(run: Path, tmp_path: Path) -> None:
    import segmentation_models_pytorch as smp

    out = tmp_path / "smp"
    result = runner.invoke(app, ["export", str(run), "--format", "smp", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out} (smp save_pretrained folder)" in result.output and "0.473" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["encoder_weights"] is None  # nothing to download
    assert "- mean: 0.473" in (out / "README.md").read_text()
    original, loaded = load_model(run).model, smp.from_pretrained(str(out)).eval()
    assert type(loaded) is type(original)
    images = torch.randn(3, 1, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(loaded(images), original(images))


def test_an_smp_export_replaces_a_folder_only_with_overwrite_and_whole(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "smp"
    out.mkdir()
    export_run(run, "smp", out)  # an empty folder is no export to lose
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"already exists; pass --overwrite"):
        export_run(run, "smp", out)
    assert (out / "notes.txt").is_file()
    export_run(run, "smp", out, overwrite=True)
    assert not (out / "notes.txt").exists() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smp"]  # no staging or old folder left


def test_a_failed_smp_export_leaves_nothing(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import segmentation_models_pytorch as smp

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(smp.Unet, "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        export_run(run, "smp", tmp_path / "smp")
    assert list(tmp_path.iterdir()) == []


def test_an_onnx_file_is_kept_without_overwrite(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    out.write_bytes(b"mine")
    with pytest.raises(ConfigError, match=r"already exists; pass --overwrite"):
        export_run(run, "onnx", out)
    assert out.read_bytes() == b"mine"


@pytest.mark.parametrize(
    ("export_format", "out_kind", "error", "message"),
    [
        ("tflite", None, ConfigError, r"unknown export format 'tflite'; choose from onnx, smp"),
        ("onnx", "folder", ConfigError, r"is a folder; the onnx export writes a file"),
        ("smp", "file", ConfigError, r"is a file; the smp export writes a folder"),
    ],
)
def test_unusable_formats_and_outs_are_refused_before_loading(
    tmp_path: Path, export_format: str, out_kind: str | None, error: type[Exception], message: str
) -> None:
    out = tmp_path / "out"
    if out_kind == "folder":
        out.mkdir()
    elif out_kind == "file":
        out.write_text("x")
    with pytest.raises(error, match=message):
        export_run(tmp_path / "no-such-run", export_format, out)  # refused before the run is looked for


@pytest.mark.parametrize("export_format", EXPORT_FORMATS)
@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("/proc/lovaszseg-export-test/out", r"/proc is on a kernel file system that takes no new files"),
        ("a-file/out", r"a-file is not a folder"),
    ],
)
def test_an_out_that_cannot_be_written_is_refused_before_loading(
    tmp_path: Path, export_format: str, where: str, reason: str
) -> None:
    (tmp_path / "a-file").write_text("x")
    out = Path(where) if where.startswith("/") else tmp_path / where
    with pytest.raises(OutputError, match=rf"^cannot write --out {re.escape(str(out))}: .*{reason}$"):
        export_run(tmp_path / "no-such-run", export_format, out)  # an OutputError, not the missing run's error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"] and (tmp_path / "a-file").read_text() == "x"
    assert not out.parent.exists() or out.parent == tmp_path / "a-file"


def test_an_unwritable_out_is_one_error_line_and_exit_2(run: Path) -> None:
    out = "/proc/lovaszseg-export-test/model.onnx"
    result = runner.invoke(app, ["export", str(run), "--format", "onnx", "--out", out])
    assert result.exit_code == 2
    reason = "/proc is on a kernel file system that takes no new files"
    assert result.output.splitlines() == [f"error: cannot write --out {out}: {reason}"]


def test_the_formats_are_the_registered_ones_and_the_help_lists_them() -> None:
    assert EXPORT_FORMATS == ("onnx", "smp")
    result = runner.invoke(app, ["export", "--help"])
    assert result.exit_code == 0 and "--overwrite" in result.output
    text = " ".join(result.output.replace("│", " ").split())
    assert "One of: onnx (one .onnx file, checked with onnxruntime), smp (a folder for smp's from_pretrained)." in text


def test_a_registered_format_is_exported_by_export_run_and_the_cli(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "_REGISTRY", dict(export._REGISTRY))  # the test's format leaves with the test

    def export_text(loaded: LoadedModel, out: Path, *, overwrite: bool = False) -> ExportResult:
        usage = model_usage(loaded)
        out.write_text(f"mean {usage['mean']}\n")
        return ExportResult(out, "text", loaded.source, usage, "a text file")

    register_exporter(Exporter("text", False, export_text, "the normalisation as text"))
    with pytest.raises(AssertionError, match="registered twice"):
        register_exporter(Exporter("text", False, export_text, "again"))
    assert "text (the normalisation as text)" in export.describe_formats()
    result = export_run(run, "text", tmp_path / "usage.txt")
    assert (result.path.read_text(), result.format, result.max_difference) == ("mean 0.473\n", "text", None)
    out = tmp_path / "cli.txt"
    cli = runner.invoke(app, ["export", str(run), "--format", "text", "--out", str(out)])
    assert cli.exit_code == 0 and f"wrote {out} (a text file) from {run / 'model.safetensors'}" in cli.output
    assert "checked" not in cli.output and out.read_text() == "mean 0.473\n"
    with pytest.raises(ConfigError, match=r"choose from onnx, smp, text$"):
        export_run(run, "tflite", tmp_path / "x")


def test_importing_the_registry_imports_no_torch() -> None:
    # The CLI imports it for --format's help, which must stay instant.
    code = "import sys, lovaszseg.inference.export; print(sorted({'torch', 'albumentations'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_a_bad_run_is_a_checkpoint_error_and_one_red_line(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no-such-run"):
        export_run(tmp_path / "no-such-run", "onnx", tmp_path / "model.onnx")
    (tmp_path / "empty").mkdir()
    out = str(tmp_path / "model.onnx")
    result = runner.invoke(app, ["export", str(tmp_path / "empty"), "--format", "onnx", "--out", out])
    assert result.exit_code == 2 and result.output.startswith("error:") and "is not a run folder" in result.output
    result = runner.invoke(app, ["export", str(tmp_path / "empty"), "--format", "tflite", "--out", out])
    assert result.exit_code == 2 and "unknown export format 'tflite'" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


@pytest.fixture(scope="module")
def head_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_run(tmp_path_factory.mktemp("export") / "head", {**_TINY_UNET, "empty_head": 0.5})


def test_onnx_of_an_empty_head_model_has_a_second_output_that_matches_pytorch(
    head_run: Path, tmp_path: Path, shared_dir: Path
) -> None:
    result = export_run(head_run, "onnx", tmp_path / "head.onnx")
    graph = onnx.load(str(result.path)).graph
    assert [o.name for o in graph.output] == ["logits", "empty_logits"]
    assert result.usage["empty_output"].startswith("empty_logits: float32 [batch, 1]")
    images = _tgs_batch(shared_dir, head_run, 5)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    logits, empty = session.run(["logits", "empty_logits"], {"images": images})
    with torch.inference_mode():
        masks, labels = load_model(head_run).model(torch.from_numpy(images))
    assert (probabilities(torch.from_numpy(logits)) - probabilities(masks)).abs().max() <= 1e-4
    assert (torch.from_numpy(empty).sigmoid() - labels.sigmoid()).abs().max() <= 1e-4
    assert empty.shape == (5, 1) and result.max_difference is not None and result.max_difference <= 1e-4


def test_smp_from_pretrained_carries_the_empty_head(head_run: Path, tmp_path: Path) -> None:
    import segmentation_models_pytorch as smp

    export_run(head_run, "smp", tmp_path / "smp")
    loaded = smp.from_pretrained(str(tmp_path / "smp")).eval()
    original = load_model(head_run).model
    images = torch.randn(3, 1, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        (masks, labels), (expected_masks, expected_labels) = loaded(images), original(images)
    assert torch.equal(masks, expected_masks) and torch.equal(labels, expected_labels)


@pytest.fixture(scope="module")
def winners_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A UNet with deep-supervision heads (random weights, seed 0)."""
    return _make_run(tmp_path_factory.mktemp("export") / "deep", {**_TINY_UNET, "deep_supervision": 0.4})


def test_deep_supervision_heads_are_absent_from_the_onnx_graph(
    winners_run: Path, tmp_path: Path, shared_dir: Path
) -> None:
    assert any(name.startswith(f"{DEEP_HEADS}.") for name in load_model(winners_run).model.state_dict())
    result = export_run(winners_run, "onnx", tmp_path / "deep.onnx")
    graph = onnx.load(str(result.path)).graph
    assert [o.name for o in graph.output] == ["logits"]
    assert not [i.name for i in graph.initializer if DEEP_HEADS in i.name]
    images = _tgs_batch(shared_dir, winners_run, 4)
    (logits,) = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"]).run(None, {"images": images})
    with torch.inference_mode():
        expected = load_model(winners_run).model(torch.from_numpy(images))
    assert (probabilities(torch.from_numpy(logits)) - probabilities(expected)).abs().max() <= 1e-4


def test_an_smp_export_of_deep_supervision_is_the_plain_unet_with_the_same_outputs(
    winners_run: Path, tmp_path: Path
) -> None:
    import segmentation_models_pytorch as smp

    export_run(winners_run, "smp", tmp_path / "smp")
    loaded = smp.from_pretrained(str(tmp_path / "smp")).eval()
    assert type(loaded) is smp.Unet and not hasattr(loaded, DEEP_HEADS)
    images = torch.randn(3, 1, 128, 128, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert torch.equal(loaded(images), load_model(winners_run).model(images))


def test_a_hypercolumn_model_exports_to_onnx_but_not_to_smp(tmp_path: Path, shared_dir: Path) -> None:
    hypercolumn = _make_run(tmp_path / "hyper", {**_TINY_UNET, "hypercolumn": True})
    with pytest.raises(ConfigError, match=r"model\.hypercolumn is not an smp architecture.*--format onnx"):
        export_run(hypercolumn, "smp", tmp_path / "smp")
    assert not (tmp_path / "smp").exists()
    result = export_run(hypercolumn, "onnx", tmp_path / "hyper.onnx")
    images = _tgs_batch(shared_dir, hypercolumn, 3)
    (logits,) = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"]).run(None, {"images": images})
    with torch.inference_mode():
        expected = load_model(hypercolumn).model(torch.from_numpy(images))
    assert (probabilities(torch.from_numpy(logits)) - probabilities(expected)).abs().max() <= 1e-4
