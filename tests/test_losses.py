"""Lovász losses against the authors' reference (golden cases), gradcheck, dtypes and bad input."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lovaszseg.errors import ConfigError
from lovaszseg.losses import (
    LovaszHingeLoss,
    LovaszSoftmaxLoss,
    WeightedSumLoss,
    _rows,
    binary_cross_entropy,
    build_loss,
    cross_entropy,
    lovasz_hinge,
    lovasz_sigmoid,
    lovasz_softmax,
    soft_jaccard,
)


def _golden_cases(shared_dir: Path) -> tuple[list[dict], np.lib.npyio.NpzFile]:
    meta = json.loads((shared_dir / "golden" / "lovasz.json").read_text())
    return meta["cases"], np.load(shared_dir / "golden" / "lovasz.npz")


def _golden_loss(case: dict, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if case["loss"] == "lovasz_hinge":
        variant = "relu" if case["variant"] == "relu" else "elu+1"
        return lovasz_hinge(logits, labels, case["per_image"], case["ignore"], variant, case.get("symmetric", False))
    return lovasz_softmax(logits, labels, case["classes"], case["per_image"], case["ignore"])


def test_every_golden_case_matches_the_reference(shared_dir: Path) -> None:
    cases, arrays = _golden_cases(shared_dir)
    assert len(cases) == 47
    for case in cases:
        name = case["name"]
        logits = torch.tensor(arrays[f"{name}.logits"], requires_grad=True)
        labels = torch.tensor(arrays[f"{name}.labels"])
        loss = _golden_loss(case, logits, labels)
        loss.backward()
        expected = float(arrays[f"{name}.loss"])
        assert loss.dtype == torch.float64
        assert loss.item() == pytest.approx(expected, rel=1e-6, abs=1e-12), name
        if case["check_grad"]:
            np.testing.assert_allclose(logits.grad.numpy(), arrays[f"{name}.grad"], rtol=1e-6, atol=1e-12, err_msg=name)


def test_golden_cases_in_float32_stay_within_float32_precision(shared_dir: Path) -> None:
    cases, arrays = _golden_cases(shared_dir)
    for case in cases:
        name = case["name"]
        logits = torch.tensor(arrays[f"{name}.logits"], dtype=torch.float32)
        loss = _golden_loss(case, logits, torch.tensor(arrays[f"{name}.labels"]))
        assert loss.dtype == torch.float32
        assert loss.item() == pytest.approx(float(arrays[f"{name}.loss"]), rel=1e-5, abs=1e-6), name


def _reference_hinge_flat(errors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Algorithm 1 of the paper, one image at a time, written independently as an oracle."""
    errors_sorted, perm = torch.sort(errors, descending=True)
    gt = labels[perm].double()
    gts = gt.sum()
    jaccard = 1.0 - (gts - gt.cumsum(0)) / (gts + (1 - gt).cumsum(0))
    grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return torch.dot(F.relu(errors_sorted), grad)


@pytest.mark.parametrize("active_fraction", [0.02, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hinge_dense_and_compact_paths_agree_with_an_oracle(active_fraction: float, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(int(active_fraction * 100))
    labels = (torch.rand(6, 20, 20, generator=generator) < 0.4).long()
    margins = torch.randn(6, 20, 20, generator=generator, dtype=torch.float64)
    # Shift margins so that roughly `active_fraction` of the errors 1 - margin are positive.
    shift = torch.quantile(margins.flatten(), active_fraction).item()
    logits = ((margins - shift + 1.0) * (labels * 2 - 1)).to(dtype)
    loss = lovasz_hinge(logits, labels, per_image=True)
    expected = torch.stack(
        [
            _reference_hinge_flat(
                1.0 - logits[i].flatten().double() * (labels[i].flatten() * 2 - 1), labels[i].flatten()
            )
            for i in range(6)
        ]
    ).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("variant", ["relu", "elu+1"])
@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("symmetric", [False, True])
def test_hinge_gradcheck(variant: str, per_image: bool, symmetric: bool) -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 2, (3, 5, 6), generator=generator)
    labels[0, 0, :3] = 255
    assert torch.autograd.gradcheck(
        lambda x: lovasz_hinge(x, labels, per_image, 255, variant, symmetric), (logits,), eps=1e-7, atol=1e-6
    )


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("classes", ["present", "all", [0, 2]])
def test_softmax_gradcheck(per_image: bool, classes: object) -> None:
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 5, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 5, 5), generator=generator)
    labels[1, :2] = 255
    assert torch.autograd.gradcheck(
        lambda x: lovasz_softmax(x, labels, classes, per_image, 255), (logits,), eps=1e-7, atol=1e-6
    )


@pytest.mark.parametrize("per_image", [True, False])
def test_sigmoid_gradcheck(per_image: bool) -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 2, (2, 3, 4, 4), generator=generator)
    assert torch.autograd.gradcheck(lambda x: lovasz_sigmoid(x, targets, per_image), (logits,), eps=1e-7, atol=1e-6)


def test_sigmoid_averages_channels_and_equals_per_channel_losses() -> None:
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 6, 6, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 2, (2, 3, 6, 6), generator=generator)
    per_channel = [lovasz_sigmoid(logits[:, c : c + 1], targets[:, c]) for c in range(3)]
    assert lovasz_sigmoid(logits, targets).item() == pytest.approx(torch.stack(per_channel).mean().item(), rel=1e-12)
    # One channel: the binary Lovász of |target - sigmoid| equals the 2-class softmax error on class 1 alone.
    two_class = torch.stack([torch.zeros_like(logits[:, 0]), logits[:, 0]], 1)
    assert per_channel[0].item() == pytest.approx(
        lovasz_softmax(two_class, targets[:, 0], classes=[1]).item(), rel=1e-12
    )


def test_softmax_perfect_prediction_is_zero_and_worst_is_one() -> None:
    labels = torch.tensor([[[0, 1], [2, 2]]])
    perfect = F.one_hot(labels, 3).permute(0, 3, 1, 2).double()
    assert lovasz_softmax(perfect, labels, from_logits=False).item() == pytest.approx(0.0)
    wrong = F.one_hot((labels + 1) % 3, 3).permute(0, 3, 1, 2).double()
    assert lovasz_softmax(wrong, labels, from_logits=False).item() == pytest.approx(1.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_compute_in_float32(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 1, 8, 8, generator=generator).to(dtype)
    labels = torch.randint(0, 2, (2, 8, 8), generator=generator)
    expected = lovasz_hinge(logits.float(), labels)
    loss = lovasz_hinge(logits.requires_grad_(), labels)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert logits.grad.dtype == dtype and torch.isfinite(logits.grad.float()).all()


def test_losses_under_cpu_autocast() -> None:
    generator = torch.Generator().manual_seed(6)
    conv = torch.nn.Conv2d(3, 4, 1)
    images = torch.randn(2, 3, 8, 8, generator=generator)
    labels = torch.randint(0, 4, (2, 8, 8), generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(images)
        assert logits.dtype == torch.bfloat16
        loss = lovasz_softmax(logits, labels) + lovasz_hinge(logits[:, :1], (labels > 1).long())
    assert loss.dtype == torch.float32
    expected = lovasz_softmax(logits.float(), labels) + lovasz_hinge(logits[:, :1].float(), (labels > 1).long())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(conv.weight.grad).all()


def test_non_contiguous_inputs_give_the_same_loss() -> None:
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 5, 9, 7, generator=generator)
    labels = torch.randint(0, 5, (2, 9, 7), generator=generator)
    transposed = logits.transpose(2, 3).contiguous().transpose(2, 3)
    assert not transposed.is_contiguous()
    assert lovasz_softmax(transposed, labels).item() == pytest.approx(lovasz_softmax(logits, labels).item(), rel=1e-6)
    binary = logits[:, 0].transpose(1, 2)
    binary_labels = (labels > 2).long().transpose(1, 2)
    assert lovasz_hinge(binary, binary_labels).item() == pytest.approx(
        lovasz_hinge(binary.contiguous(), binary_labels.contiguous()).item(), rel=1e-6
    )


def test_all_void_image_counts_as_zero_in_the_per_image_mean() -> None:
    generator = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 6, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 2, (2, 6, 6), generator=generator)
    labels[1] = 255
    alone = lovasz_hinge(logits[:1], labels[:1], ignore_index=255)
    assert lovasz_hinge(logits, labels, ignore_index=255).item() == pytest.approx(alone.item() / 2)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: lovasz_hinge(torch.randn(2, 4, 4), torch.full((2, 4, 4), 2)), ValueError, "0, 1"),
        (lambda: lovasz_hinge(torch.randn(2, 4, 4), torch.zeros(2, 5, 4)), ValueError, r"\(2, 5, 4\)"),
        (lambda: lovasz_hinge(torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 4)), TypeError, "floating"),
        (lambda: lovasz_hinge(torch.randn(2, 4, 4), torch.zeros(2, 4, 4), variant="elu"), ValueError, "variant"),
        (lambda: lovasz_softmax(torch.randn(2, 3, 4, 4), torch.full((2, 4, 4), 3)), ValueError, "C=3"),
        (lambda: lovasz_softmax(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4)), TypeError, "integer"),
        (lambda: lovasz_softmax(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long)), ValueError, "B, C"),
        (
            lambda: lovasz_softmax(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), [5]),
            ValueError,
            "ids",
        ),
        (
            lambda: lovasz_softmax(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), "most"),
            ValueError,
            "classes",
        ),
        (lambda: lovasz_sigmoid(torch.randn(2, 3, 4, 4), torch.zeros(2, 2, 4, 4)), ValueError, "same shape"),
    ],
)
def test_bad_calls_name_what_was_expected(call, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()


EMPTY_BATCH = [
    (lovasz_hinge, (0, 1, 4, 4), (0, 4, 4)),
    (binary_cross_entropy, (0, 1, 4, 4), (0, 4, 4)),
    (soft_jaccard, (0, 4, 4), (0, 4, 4)),
    (lovasz_softmax, (0, 3, 4, 4), (0, 4, 4)),
    (cross_entropy, (0, 3, 4, 4), (0, 4, 4)),
    (lovasz_sigmoid, (0, 3, 4, 4), (0, 3, 4, 4)),
]


@pytest.mark.parametrize(("loss", "logits_shape", "labels_shape"), EMPTY_BATCH)
def test_an_empty_batch_is_a_clear_error_naming_the_shapes(
    loss: Callable[..., torch.Tensor], logits_shape: tuple[int, ...], labels_shape: tuple[int, ...]
) -> None:
    shapes = rf"logits {re.escape(str(logits_shape))} and (labels|targets) {re.escape(str(labels_shape))}"
    with pytest.raises(ValueError, match=rf"got an empty batch \(batch size 0\): {shapes}"):
        loss(torch.zeros(logits_shape), torch.zeros(labels_shape, dtype=torch.long))


@pytest.mark.parametrize(
    ("loss", "logits_shape", "labels_shape"),
    [(lovasz_hinge, (2, 1, 0, 4), (2, 0, 4)), (lovasz_softmax, (2, 0, 4, 4), (2, 4, 4))],
)
def test_images_without_pixels_are_a_clear_error(
    loss: Callable[..., torch.Tensor], logits_shape: tuple[int, ...], labels_shape: tuple[int, ...]
) -> None:
    with pytest.raises(ValueError, match=rf"got no values: logits {re.escape(str(logits_shape))}"):
        loss(torch.zeros(logits_shape), torch.zeros(labels_shape, dtype=torch.long))


def test_ignored_pixels_with_out_of_range_values_are_accepted() -> None:
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 0] = 255
    assert torch.isfinite(lovasz_softmax(torch.randn(1, 3, 4, 4), labels, ignore_index=255))
    assert torch.isfinite(lovasz_hinge(torch.randn(1, 4, 4), labels, ignore_index=255))


@pytest.mark.parametrize("values", [[0.0, 1.0, 0.0], [1, 2, 3]])
def test_descending_keys_order_like_the_floats(values: list[float]) -> None:
    generator = torch.Generator().manual_seed(9)
    floats = torch.cat(
        [
            torch.randn(500, generator=generator) * 1e3,
            torch.tensor(values, dtype=torch.float32),
            torch.tensor([0.0, -0.0, 1e-45, -1e-45, float("inf"), -float("inf")]),
        ]
    )
    keys = _rows._descending_key32(floats)
    assert torch.equal(floats[torch.sort(keys, stable=True).indices], torch.sort(floats, descending=True).values)


def test_row_weights_telescope_to_the_jaccard_loss_of_predicting_everything_wrong() -> None:
    # The weights of a row sum to J_N = 1: with every element counted as an error the IoU is 0.
    generator = torch.Generator().manual_seed(10)
    errors = torch.rand(4, 50, generator=generator)
    foreground = torch.rand(4, 50, generator=generator) < 0.3
    valid = torch.ones(4, 50, dtype=torch.bool)
    valid[3] = False  # a fully ignored row has no weight at all
    weights = _rows.lovasz_row_weights(errors, foreground, valid)
    torch.testing.assert_close(weights.sum(1), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert (weights[:3] >= 0).all()  # J_p is non-decreasing along the sorted order


def test_soft_jaccard_values() -> None:
    probs = torch.tensor([[[0.8, 0.6], [0.2, 0.0]]], dtype=torch.float64)
    labels = torch.tensor([[[1, 1], [0, 255]]])
    intersection, union = 0.8 + 0.6, 0.8 + 0.6 + 0.2 + 2 - (0.8 + 0.6)
    expected = 1 - intersection / union
    loss = soft_jaccard(probs, labels, smooth=0.0, ignore_index=255, from_logits=False)
    assert loss.item() == pytest.approx(expected)
    # Multi-class: perfect one-hot probabilities give 0, with void pixels excluded.
    one_hot = F.one_hot(labels.clamp(max=2), 3).permute(0, 3, 1, 2).double()
    assert soft_jaccard(one_hot, labels, "multiclass", ignore_index=255, from_logits=False).item() == pytest.approx(0)


def test_cross_entropies_ignore_void_and_match_torch() -> None:
    generator = torch.Generator().manual_seed(11)
    logits = torch.randn(2, 4, 5, 5, generator=generator)
    labels = torch.randint(0, 4, (2, 5, 5), generator=generator)
    labels[0, 0] = 255
    expected = F.cross_entropy(logits, labels, ignore_index=255)
    assert cross_entropy(logits, labels, 255).item() == pytest.approx(expected.item(), rel=1e-6)
    assert cross_entropy(logits, torch.full_like(labels, 255), 255).item() == 0.0
    binary = (labels == 1).long().masked_fill(labels == 255, 255)
    valid = binary != 255
    expected_bce = F.binary_cross_entropy_with_logits(logits[:, 0][valid], binary[valid].float())
    assert binary_cross_entropy(logits[:, :1], binary, 255).item() == pytest.approx(expected_bce.item(), rel=1e-6)


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("lovasz_hinge", LovaszHingeLoss),
        ({"lovasz_softmax": {"per_image": True}}, LovaszSoftmaxLoss),
        ({"bce": 0.5, "lovasz_hinge": 0.5}, WeightedSumLoss),
        ({"lovasz_hinge": {"weight": 2.0, "variant": "elu+1"}}, WeightedSumLoss),
        ({"lovasz_hinge": None}, LovaszHingeLoss),
    ],
)
def test_build_loss_specs(spec: object, kind: type) -> None:
    assert isinstance(build_loss(spec, ignore_index=255), kind)


def test_weighted_sum_adds_weighted_terms() -> None:
    generator = torch.Generator().manual_seed(12)
    logits = torch.randn(2, 1, 6, 6, generator=generator)
    labels = torch.randint(0, 2, (2, 6, 6), generator=generator)
    loss = build_loss({"bce": 0.25, "lovasz_hinge": {"weight": 0.75, "per_image": False}})
    expected = 0.25 * binary_cross_entropy(logits, labels) + 0.75 * lovasz_hinge(logits, labels, per_image=False)
    assert loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_build_loss_passes_ignore_index_and_lets_options_override_it() -> None:
    assert build_loss("lovasz_softmax", ignore_index=255).ignore_index == 255
    assert build_loss({"lovasz_softmax": {"ignore_index": 0}}, ignore_index=255).ignore_index == 0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("lovasz", "unknown loss 'lovasz'"),
        ({"lovasz_hinge": {"per_imag": True}}, r"loss 'lovasz_hinge' has no option \['per_imag'\]"),
        ({"bce": "half"}, "loss 'bce': expected a weight"),
        ({"bce": {"weight": "x"}}, "loss 'bce': weight must be a finite number >= 0, got 'x'"),
        ({"bce": -1}, "loss 'bce': weight must be a finite number >= 0, got -1"),
        ({"bce": float("inf")}, "loss 'bce': weight must be a finite number >= 0, got inf"),
        ({}, "non-empty"),
        (
            {"lovasz_hinge": {"variant": "elu"}},
            r"loss 'lovasz_hinge': variant must be one of \['relu', 'elu\+1'\], got 'elu'",
        ),
        ({"lovasz_hinge": {"per_image": "false"}}, "loss 'lovasz_hinge': per_image must be true or false, got 'false'"),
        ({"lovasz_hinge": {"symmetric": 1}}, "loss 'lovasz_hinge': symmetric must be true or false, got 1"),
        ({"lovasz_softmax": {"classes": "most"}}, r"classes must be one of \['present', 'all'\], got 'most'"),
        (
            {"lovasz_softmax": {"classes": []}},
            r"classes must be 'present', 'all' or a non-empty list of class ids, got \[\]",
        ),
        ({"lovasz_softmax": {"classes": [1, -2]}}, r"non-empty list of class ids, got \[1, -2\]"),
        ({"lovasz_softmax": {"ignore_index": "255"}}, "ignore_index must be an integer label value or null, got '255'"),
        ({"lovasz_sigmoid": {"per_image": None}}, "loss 'lovasz_sigmoid': per_image must be true or false, got None"),
        ({"jaccard": {"smooth": -1}}, "loss 'jaccard': smooth must be a finite number >= 0, got -1"),
        (
            {"jaccard": {"mode": "multilabel"}},
            r"mode must be one of \[None, 'binary', 'multiclass'\], got 'multilabel'",
        ),
        ({"jaccard": {"classes": [1]}}, r"classes must be one of \['present', 'all'\], got \[1\]"),
        ({"bce": {"pos_weight": 0}}, "loss 'bce': pos_weight must be a finite number > 0, got 0"),
        ({"ce": {"label_smoothing": 1.5}}, "loss 'ce': label_smoothing must be a finite number >= 0 and <= 1, got 1.5"),
        ({"ce": {"class_weights": [1, -1]}}, r"loss 'ce': class_weights must be a list of one finite weight >= 0"),
        ({"lovasz_softmax": {"class_weights": [0, 0]}}, r"not all 0, or null; got \[0, 0\]"),
        ({"lovasz_softmax": {"class_weights": "1,2"}}, "loss 'lovasz_softmax': class_weights must be a list"),
        ({"ce": {"class_weights": [1, float("nan")]}}, "loss 'ce': class_weights must be a list"),
    ],
)
def test_build_loss_errors(spec: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_loss(spec)


CLASS_WEIGHTS = [0.5, 2.0, 1.0, 3.0]


def _four_class_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(3, 4, 5, 6, dtype=torch.float64, generator=generator)
    labels = torch.randint(0, 3, (3, 5, 6), generator=generator)  # class 3 absent everywhere
    labels[0, 0] = 255
    labels[1] = 0  # image 1 holds class 0 only
    return scores, labels


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("classes", ["present", "all", [1, 3]])
def test_lovasz_softmax_equal_class_weights_are_the_plain_mean(per_image: bool, classes: object) -> None:
    scores, labels = _four_class_batch()
    plain = lovasz_softmax(scores, labels, classes, per_image, 255)
    weighted = lovasz_softmax(scores, labels, classes, per_image, 255, class_weights=[2.5] * 4)
    torch.testing.assert_close(weighted, plain, rtol=0, atol=1e-12)


@pytest.mark.parametrize("classes", ["present", "all", [1, 3]])
def test_lovasz_softmax_class_weights_are_a_weighted_mean_over_the_selected_classes(classes: object) -> None:
    scores, labels = _four_class_batch()
    weights = torch.tensor(CLASS_WEIGHTS, dtype=torch.float64)
    selected = classes if isinstance(classes, list) else {"present": [0, 1, 2], "all": [0, 1, 2, 3]}[classes]
    # The batch's loss: each selected class's own loss (classes=[c]), weighted by hand.
    per_class = torch.stack([lovasz_softmax(scores, labels, [c], False, 255) for c in selected])
    expected = (per_class * weights[selected]).sum() / weights[selected].sum()
    got = lovasz_softmax(scores, labels, classes, False, 255, class_weights=CLASS_WEIGHTS)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    # Per image: each image's weighted mean over its own present classes, then the mean over images.
    images = []
    for image in range(scores.shape[0]):
        one_scores, one_labels = scores[image : image + 1], labels[image : image + 1]
        present = sorted(set(one_labels[one_labels != 255].tolist())) if classes == "present" else selected
        losses = torch.stack([lovasz_softmax(one_scores, one_labels, [c], False, 255) for c in present])
        images.append((losses * weights[present]).sum() / weights[present].sum())
    got = lovasz_softmax(scores, labels, classes, True, 255, class_weights=CLASS_WEIGHTS)
    torch.testing.assert_close(got, torch.stack(images).mean(), rtol=0, atol=1e-12)


def test_lovasz_softmax_an_image_whose_classes_all_weigh_0_counts_as_0() -> None:
    scores, labels = _four_class_batch()
    weights = [0.0, 1.0, 1.0, 1.0]  # image 1 holds class 0 only
    got = lovasz_softmax(scores, labels, "present", True, 255, class_weights=weights)
    others = [
        lovasz_softmax(scores[i : i + 1], labels[i : i + 1], "present", True, 255, class_weights=weights)
        for i in (0, 2)
    ]
    torch.testing.assert_close(got, sum(others) / 3, rtol=0, atol=1e-12)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("ignore", [None, 255])
def test_cross_entropy_class_weights_match_torch(label_smoothing: float, ignore: int | None) -> None:
    scores, labels = _four_class_batch()
    if ignore is None:
        labels = labels.clamp(max=3)
    weights = torch.tensor(CLASS_WEIGHTS, dtype=torch.float64)
    expected = F.cross_entropy(
        scores, labels, weight=weights, ignore_index=-100 if ignore is None else ignore, label_smoothing=label_smoothing
    )
    got = cross_entropy(scores, labels, ignore, label_smoothing, class_weights=CLASS_WEIGHTS)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    plain = cross_entropy(scores, labels, ignore, label_smoothing)
    equal = cross_entropy(scores, labels, ignore, label_smoothing, [1.0] * 4)
    torch.testing.assert_close(equal, plain, rtol=0, atol=1e-12)


def test_cross_entropy_class_weights_of_an_all_ignored_batch_give_0() -> None:
    scores, labels = _four_class_batch()
    assert cross_entropy(scores, torch.full_like(labels, 255), 255, class_weights=CLASS_WEIGHTS) == 0


@pytest.mark.parametrize("loss", [lovasz_softmax, cross_entropy])
def test_class_weights_of_another_length_than_the_classes_fail(loss: Callable[..., torch.Tensor]) -> None:
    scores, labels = _four_class_batch()
    with pytest.raises(ValueError, match="class_weights has 3 weights but the logits have C=4 classes"):
        loss(scores, labels, ignore_index=255, class_weights=[1.0, 1.0, 1.0])


@pytest.mark.parametrize("name", ["ce", "lovasz_softmax"])
def test_build_loss_checks_class_weights_against_the_classes(name: str) -> None:
    module = build_loss({name: {"class_weights": CLASS_WEIGHTS}}, ignore_index=255, num_classes=4)
    scores, labels = _four_class_batch()
    functional = cross_entropy if name == "ce" else lovasz_softmax
    expected = functional(scores, labels, ignore_index=255, class_weights=CLASS_WEIGHTS)
    torch.testing.assert_close(module(scores, labels), expected)
    with pytest.raises(ConfigError, match=f"loss '{name}': class_weights has 4 weights but the data has 21 classes"):
        build_loss({"ce": 0.5, name: {"class_weights": CLASS_WEIGHTS}}, num_classes=21)
