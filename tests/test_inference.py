"""Whole / slide / TTA inference: equivariant models reproduce the whole-image output; windows cover the image."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from src.inference import (
    InferenceOptions,
    predict_slide,
    predict_tta,
    predict_whole,
    segment,
    segment_padded_batch,
    window_starts,
)
from src.utils.errors import UserError


def pointwise_model(num_classes: int = 5, seed: int = 0) -> nn.Module:
    """A 1x1 convolution: each pixel's logits depend on that pixel only (equivariant to crops and flips)."""
    torch.manual_seed(seed)
    return nn.Conv2d(3, num_classes, kernel_size=1).eval()


def context_model(num_classes: int = 5) -> nn.Module:
    """A 7x7 zero-padded convolution: its output near a border depends on where the border is."""
    torch.manual_seed(1)
    return nn.Conv2d(3, num_classes, kernel_size=7, padding=3).eval()


class Recorder(nn.Module):
    """Wraps a model and records the spatial size of every input it sees."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[-2:]))
        return self.model(x)


@pytest.mark.parametrize(
    ("length", "crop", "stride"),
    [(100, 32, 20), (64, 32, 32), (33, 32, 16), (20, 32, 16), (97, 40, 13)],
)
def test_windows_cover_every_pixel_and_stay_inside(length: int, crop: int, stride: int) -> None:
    starts = window_starts(length, crop, stride)
    covered = torch.zeros(length, dtype=torch.long)
    for start in starts:
        covered[start : min(start + crop, length)] += 1
        assert start >= 0 and (start + crop <= length or length < crop)
    assert covered.min() >= 1
    # consecutive windows never leave a gap larger than the stride
    assert all(b - a <= stride for a, b in zip(starts, starts[1:], strict=False))


@torch.no_grad()
def test_slide_reproduces_whole_image_on_pointwise_model() -> None:
    model = pointwise_model()
    images = torch.randn(2, 3, 70, 101)
    whole = predict_whole(model, images)
    recorder = Recorder(model)
    slide = predict_slide(recorder, images, crop=(32, 48), stride=(20, 30))
    assert torch.allclose(slide, whole, atol=1e-6)
    assert len(recorder.sizes) > 4 and all(size == (32, 48) for size in recorder.sizes)


@torch.no_grad()
def test_slide_differs_from_whole_on_a_model_that_sees_context() -> None:
    # The equivalence above is a property of the model, not a tautology of predict_slide.
    model = context_model()
    images = torch.randn(1, 3, 64, 64)
    assert not torch.allclose(
        predict_slide(model, images, (32, 32), (16, 16)), predict_whole(model, images), atol=1e-4
    )


@torch.no_grad()
def test_slide_on_an_image_smaller_than_the_window_is_one_pass() -> None:
    model = pointwise_model()
    images = torch.randn(1, 3, 40, 50)
    recorder = Recorder(model)
    out = predict_slide(recorder, images, crop=(64, 64), stride=(32, 32))
    assert recorder.sizes == [(40, 50)]
    assert torch.allclose(out, model(images), atol=1e-6)


@torch.no_grad()
def test_flip_tta_reproduces_whole_image_probabilities_on_pointwise_model() -> None:
    model = pointwise_model()
    images = torch.randn(2, 3, 48, 61)
    options = InferenceOptions(tta=True, scales=(1.0,), flip=True)
    recorder = Recorder(model)
    probs = predict_tta(recorder, images, options)
    assert torch.allclose(probs, model(images).softmax(1), atol=1e-6)
    assert recorder.sizes == [(48, 61), (48, 61)]  # plain and flipped


@torch.no_grad()
def test_flip_tta_unflips_the_prediction() -> None:
    # A model that ignores the image and scores each pixel by its column index: not flip-equivariant,
    # so the flipped pass, once un-flipped, differs from the plain one.
    class Column(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            col = torch.arange(x.shape[-1], dtype=x.dtype).expand(x.shape[0], 1, x.shape[-2], -1)
            return torch.cat([col, -col], dim=1) + x[:, :1] * 0

    images = torch.randn(1, 3, 32, 40)
    model = Column()
    only_flip = predict_tta(model, images, InferenceOptions(tta=True, scales=(1.0,), flip=True))
    plain = model(images).softmax(1)
    unflipped = model(images.flip(-1)).flip(-1).softmax(1)
    assert torch.allclose(only_flip, (plain + unflipped) / 2, atol=1e-6)
    # without the un-flip the flipped pass would equal the plain one
    assert not torch.allclose(only_flip, plain, atol=1e-3)


@torch.no_grad()
def test_multiscale_tta_runs_each_scale_and_reproduces_constant_images() -> None:
    # Bilinear resizing of a constant image is exact, so a pointwise model's TTA equals its whole-image output.
    model = pointwise_model()
    colours = torch.randn(2, 3, 1, 1)
    images = colours.expand(2, 3, 64, 80).contiguous()
    options = InferenceOptions(tta=True)  # the default scales 0.5 ... 1.75 and flip
    recorder = Recorder(model)
    probs = segment(recorder, images, options)
    assert torch.allclose(probs, model(images).softmax(1), atol=1e-6)
    expected = [(round(64 * s), round(80 * s)) for s in options.scales for _ in (0, 1)]
    assert recorder.sizes == expected


@torch.no_grad()
def test_multiscale_tta_matches_a_direct_reference_on_smooth_images() -> None:
    model = pointwise_model()
    images = F.interpolate(
        torch.randn(1, 3, 6, 7), size=(60, 70), mode="bicubic", align_corners=False
    )
    scales = (0.75, 1.0, 1.5)
    probs = predict_tta(model, images, InferenceOptions(tta=True, scales=scales, flip=True))
    reference = torch.zeros_like(probs)
    for s in scales:
        size = (round(60 * s), round(70 * s))
        for flip in (False, True):
            x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            y = model(x.flip(-1) if flip else x)
            y = y.flip(-1) if flip else y
            reference += F.interpolate(
                y, size=(60, 70), mode="bilinear", align_corners=False
            ).softmax(1)
    assert torch.allclose(probs, reference / 6, atol=1e-6)
    # and it agrees with the whole-image prediction almost everywhere (smooth input, pointwise model)
    agree = (probs.argmax(1) == model(images).argmax(1)).float().mean()
    assert agree > 0.95


@torch.no_grad()
def test_slide_tta_combination_on_pointwise_model() -> None:
    model = pointwise_model()
    images = torch.randn(1, 3, 64, 96)
    options = InferenceOptions(
        mode="slide", crop_size=(32, 32), stride=(16, 24), tta=True, scales=(1.0,), flip=True
    )
    assert torch.allclose(segment(model, images, options), model(images).softmax(1), atol=1e-6)


@torch.no_grad()
def test_padded_batch_predicts_each_image_on_its_own_extent() -> None:
    model = context_model()
    # two images, 40x50 and 70x64, padded to the batch's 96x64 with a constant (the mean colour, 0 here)
    first, second = torch.randn(1, 3, 40, 50), torch.randn(1, 3, 70, 64)
    batch = torch.zeros(2, 3, 96, 64)
    batch[0, :, :40, :50], batch[1, :, :70, :64] = first[0], second[0]
    masks = segment_padded_batch(model, batch, [(40, 50), (70, 64)], InferenceOptions(), multiple=32)
    alone_first = model(F.pad(first, (0, 14, 0, 24)))[0].argmax(0)[:40, :50]  # its own 64x64 extent
    alone_second = model(F.pad(second, (0, 0, 0, 26)))[0].argmax(0)[:70, :64]  # 96x64
    assert masks[0].shape == (40, 50) and masks[1].shape == (70, 64)
    assert torch.equal(masks[0], alone_first) and torch.equal(masks[1], alone_second)


def test_options_name_the_bad_key() -> None:
    with pytest.raises(UserError, match=r"eval\.mode='tiles'"):
        InferenceOptions.from_config({"mode": "tiles"}, "eval")
    with pytest.raises(
        UserError, match=r"predict\.stride=\[64, 64\] exceeds predict\.crop_size=\[32, 32\]"
    ):
        InferenceOptions.from_config({"mode": "slide", "crop_size": 32, "stride": 64}, "predict")
    with pytest.raises(UserError, match=r"eval\.crop_size"):
        InferenceOptions.from_config({"crop_size": [0, 3]}, "eval")
    options = InferenceOptions.from_config(
        {"mode": "slide", "crop_size": [64, 48], "stride": 32, "tta": True, "scales": [1, 2]},
        "eval",
    )
    assert options == InferenceOptions("slide", (64, 48), (32, 32), True, (1.0, 2.0), True)
