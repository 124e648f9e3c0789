"""Expert architectures: shapes, decode contract, sizes, and the properties the loader and
executors rely on (plain-tensor state dicts, meta construction, functional_call)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from coserve.architectures import Decoded, ExpertModule, ResNetClassifier, YoloDetector

# Tiny sizes keep the whole file to a few seconds on a 2-core CPU.
TINY_RESNET = {"depth": 10, "width": 8, "num_classes": 3}
TINY_YOLO = {"depth_multiple": 0.33, "width_multiple": 0.125, "num_classes": 3}


def _num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _on_meta(cls: type[ExpertModule], **kwargs: object) -> ExpertModule:
    # Meta tensors have shapes but no storage: counting a ResNet-101 costs nothing.
    with torch.device("meta"):
        return cls(**kwargs)


def _seeded(cls: type[ExpertModule], **kwargs: object) -> ExpertModule:
    torch.manual_seed(0)
    return cls(**kwargs).eval()


def _images(num_images: int = 2, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(num_images, 3, size, size, generator=generator)  # [N, 3, S, S]


@pytest.mark.parametrize("depth", [10, 18, 34, 50, 101])
@pytest.mark.parametrize("width", [4, 8])
def test_resnet_forward_gives_one_logit_row_per_image(depth: int, width: int) -> None:
    model = _seeded(ResNetClassifier, depth=depth, width=width, num_classes=5)
    with torch.no_grad():
        out = model(_images(2))
    assert out.shape == (2, 5)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("size", [32, 64, 96])
def test_resnet_accepts_any_multiple_of_32(size: int) -> None:
    model = _seeded(ResNetClassifier, **TINY_RESNET)
    with torch.no_grad():
        assert model(_images(1, size)).shape == (1, 3)


@pytest.mark.parametrize(("depth_multiple", "width_multiple"), [(0.33, 0.125), (0.67, 0.25)])
@pytest.mark.parametrize("num_anchors", [1, 3])
def test_yolo_forward_gives_boxes_for_every_anchor(
    depth_multiple: float, width_multiple: float, num_anchors: int
) -> None:
    model = _seeded(
        YoloDetector,
        depth_multiple=depth_multiple,
        width_multiple=width_multiple,
        num_classes=3,
        num_anchors=num_anchors,
    )
    with torch.no_grad():
        out = model(_images(2, 64))
    # Strides 8, 16, 32 on a 64x64 image: 8x8 + 4x4 + 2x2 cells per anchor.
    assert out.shape == (2, num_anchors * (64 + 16 + 4), 5 + 3)


def test_yolo_accepts_non_square_inputs() -> None:
    model = _seeded(YoloDetector, **TINY_YOLO)
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 32, 96))  # [1, 3, H, W]
    assert out.shape == (1, 3 * (4 * 12 + 2 * 6 + 1 * 3), 8)


def test_yolo_rejects_sizes_that_are_not_multiples_of_32() -> None:
    model = _seeded(YoloDetector, **TINY_YOLO)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.zeros(1, 3, 40, 32))


@pytest.mark.parametrize(
    ("cls", "kwargs", "size"),
    [(ResNetClassifier, TINY_RESNET, 32), (YoloDetector, TINY_YOLO, 32)],
)
def test_decode_gives_one_json_serialisable_result_per_item(
    cls: type[ExpertModule], kwargs: dict, size: int
) -> None:
    model = _seeded(cls, **kwargs)
    with torch.no_grad():
        results = model.decode(model(_images(3, size)))
    assert len(results) == 3
    for result in results:
        assert isinstance(result, Decoded)
        assert type(result.label_index) is int
        assert 0 <= result.label_index < model.num_labels
        json.dumps(result.detail)


def test_resnet_decode_reports_argmax_and_probabilities() -> None:
    model = _seeded(ResNetClassifier, **TINY_RESNET)
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, -1.0, 0.0]])  # [N, num_classes]
    first, second = model.decode(logits)
    assert (first.label_index, second.label_index) == (1, 0)
    assert first.detail["scores"] == pytest.approx(logits[0].softmax(-1).tolist())
    assert sum(second.detail["scores"]) == pytest.approx(1.0)


def _yolo_output(num_anchors: int, confident_anchor: int | None) -> torch.Tensor:
    """A fake head output, `[1, A, 5 + 2]`, confident about one anchor (or none)."""
    out = torch.full((1, num_anchors, 7), -6.0)  # [1, A, 7]
    out[0, :, :4] = torch.arange(num_anchors, dtype=torch.float32)[:, None]
    if confident_anchor is not None:
        out[0, confident_anchor, 4] = 6.0  # objectness
        out[0, confident_anchor, 6] = 6.0  # class 1
    return out


def test_yolo_decode_flags_an_image_with_a_confident_box() -> None:
    model = _seeded(YoloDetector, **{**TINY_YOLO, "num_classes": 2})
    (result,) = model.decode(_yolo_output(num_anchors=10, confident_anchor=7))
    assert model.labels[result.label_index] == "flagged"
    top_box = result.detail["boxes"][0]
    assert top_box[:4] == [7.0, 7.0, 7.0, 7.0]
    assert top_box[5] == 1 and type(top_box[5]) is int
    assert top_box[4] == pytest.approx(result.detail["max_score"])
    assert result.detail["max_score"] > 0.9
    assert len(result.detail["boxes"]) == 5


def test_yolo_decode_clears_an_image_without_confident_boxes() -> None:
    model = _seeded(YoloDetector, **{**TINY_YOLO, "num_classes": 2})
    (result,) = model.decode(_yolo_output(num_anchors=3, confident_anchor=None))
    assert model.labels[result.label_index] == "clear"
    assert len(result.detail["boxes"]) == 3  # fewer anchors than the top-5 report
    assert result.detail["max_score"] < 0.5


def test_resnet_parameter_count_grows_with_depth_and_width() -> None:
    by_depth = [_num_params(_on_meta(ResNetClassifier, depth=d)) for d in (10, 18, 34, 50, 101)]
    by_width = [_num_params(_on_meta(ResNetClassifier, width=w)) for w in (16, 32, 64)]
    assert by_depth == sorted(set(by_depth))
    assert by_width == sorted(set(by_width))


def test_yolo_parameter_count_grows_with_depth_and_width() -> None:
    by_depth = [_num_params(_on_meta(YoloDetector, depth_multiple=d)) for d in (0.33, 0.67, 1.0)]
    by_width = [_num_params(_on_meta(YoloDetector, width_multiple=w)) for w in (0.25, 0.5, 1.0)]
    assert by_depth == sorted(set(by_depth))
    assert by_width == sorted(set(by_width))


@pytest.mark.parametrize(("depth", "expected"), [(18, 11.69e6), (101, 44.5e6)])
def test_resnet_matches_torchvision_size(depth: int, expected: float) -> None:
    model = _on_meta(ResNetClassifier, depth=depth, width=64, num_classes=1000)
    assert _num_params(model) == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize(
    ("depth_multiple", "width_multiple", "expected"), [(0.67, 0.75, 21.2e6), (1.0, 1.0, 46.5e6)]
)
def test_yolo_matches_yolov5_size(
    depth_multiple: float, width_multiple: float, expected: float
) -> None:
    model = _on_meta(
        YoloDetector, depth_multiple=depth_multiple, width_multiple=width_multiple, num_classes=80
    )
    assert _num_params(model) == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (ResNetClassifier, {"depth": 19}, "10, 18, 34, 50, 101, 152"),
        (ResNetClassifier, {"width": 0}, "positive int"),
        (ResNetClassifier, {"num_classes": 0}, "positive int"),
        (YoloDetector, {"width_multiple": 0.0}, "must be > 0"),
        (YoloDetector, {"num_anchors": 4}, "from 1 to 3"),
    ],
)
def test_invalid_arguments_say_what_is_allowed(
    cls: type[ExpertModule], kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


@pytest.mark.parametrize(
    ("cls", "kwargs"), [(ResNetClassifier, TINY_RESNET), (YoloDetector, TINY_YOLO)]
)
def test_same_weights_and_input_give_identical_output(
    cls: type[ExpertModule], kwargs: dict
) -> None:
    first, second = _seeded(cls, **kwargs), cls(**kwargs).eval()
    second.load_state_dict(first.state_dict())
    images = _images(2)
    with torch.no_grad():
        assert torch.equal(first(images), second(images))
        assert torch.equal(first(images), first(images))


@pytest.mark.parametrize(
    ("cls", "kwargs"), [(ResNetClassifier, TINY_RESNET), (YoloDetector, TINY_YOLO)]
)
def test_functional_call_with_external_weights_matches_loaded_module(
    cls: type[ExpertModule], kwargs: dict
) -> None:
    # The executors keep weights outside the module; the module must read nothing else.
    trained, fresh = _seeded(cls, **kwargs), cls(**kwargs).eval()
    weights = {name: t.clone() for name, t in trained.state_dict().items()}
    images = _images(2)
    with torch.no_grad():
        expected = trained(images)
        actual = torch.func.functional_call(fresh, weights, (images,))
    assert torch.equal(expected, actual)


@pytest.mark.parametrize(
    ("cls", "kwargs"), [(ResNetClassifier, TINY_RESNET), (YoloDetector, TINY_YOLO)]
)
def test_state_dict_is_plain_tensors_and_round_trips_through_safetensors(
    cls: type[ExpertModule], kwargs: dict, tmp_path
) -> None:
    model = _seeded(cls, **kwargs)
    state = model.state_dict()
    assert all(isinstance(t, torch.Tensor) for t in state.values())
    path = tmp_path / "expert.safetensors"
    # save_file also refuses shared storage, so this doubles as a no-weight-tying check.
    save_file(state, str(path))
    loaded = load_file(str(path))
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[name], state[name]) for name in state)


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (ResNetClassifier, TINY_RESNET),
        (ResNetClassifier, {**TINY_RESNET, "depth": 50}),
        (YoloDetector, TINY_YOLO),
        (YoloDetector, {**TINY_YOLO, "num_anchors": 2}),
    ],
)
def test_meta_construction_has_the_same_state_dict_layout(
    cls: type[ExpertModule], kwargs: dict
) -> None:
    on_cpu = cls(**kwargs).state_dict()
    on_meta = _on_meta(cls, **kwargs).state_dict()
    assert list(on_meta) == list(on_cpu)
    for name, tensor in on_cpu.items():
        assert on_meta[name].is_meta
        assert (on_meta[name].shape, on_meta[name].dtype) == (tensor.shape, tensor.dtype), name
