"""Procedural component images (coserve.zoo.pcb_images) and the cheap classifier training
on them (coserve.zoo.pcb_train): determinism, shapes, defects that show, and experts that
decide pass/defect well above chance. Sized to run in a few seconds on a 2-core CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coserve.architectures import ResNetClassifier
from coserve.zoo.pcb_images import (
    DEFECT_KINDS,
    FAMILIES,
    component_types,
    family_of,
    render,
    render_batch,
    sample_batch,
    sample_component,
)

# One type per kind of footprint: chip passive, gull-wing IC, header, polarised two-pin,
# three-pin transistor.
SOME_TYPES = ["R0603-0001", "U-SOIC8-0002", "J-HDR4-0003", "D-SOD123-0004", "Q-SOT23-0005"]


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_component_types_are_deterministic_distinct_and_spread():
    types = component_types(120, seed=3)
    assert types == component_types(120, seed=3)
    assert types != component_types(120, seed=4)
    assert len(set(types)) == 120
    families = [family_of(t) for t in types]
    assert set(families) == set(FAMILIES)  # every family once there are enough types
    # A board's skew: many passives, few ICs.
    assert families.count("resistor") + families.count("capacitor") > 3 * families.count("ic")
    assert component_types(0) == []


def test_family_of_parses_names_and_rejects_others():
    assert family_of("R0402-0007") == "resistor"
    assert family_of("LED0603-0012") == "led"
    assert family_of("L0805-0001") == "inductor"
    assert family_of("U-SOIC8-0003") == "ic"
    for bad in ("X0402-0001", "U-NOPE-0001", "R0402", "resistor"):
        with pytest.raises(ValueError, match="component_types"):
            family_of(bad)


@pytest.mark.parametrize("component_type", SOME_TYPES)
def test_render_shape_dtype_range(component_type):
    image = render(component_type, None, _rng(), size=64)
    assert image.shape == (3, 64, 64)
    assert image.dtype == torch.float32
    assert image.min().item() >= 0.0 and image.max().item() <= 1.0
    assert image.std().item() > 0.05  # a picture, not a flat field
    assert render(component_type, None, _rng(), size=32).shape == (3, 32, 32)


def test_same_seed_same_image_different_seed_different_image():
    a = render("C0805-0009", "bridged", _rng(7))
    assert torch.equal(a, render("C0805-0009", "bridged", _rng(7)))
    assert not torch.equal(a, render("C0805-0009", "bridged", _rng(8)))
    # Appearance is a function of the type name: another type differs under the same rng.
    assert not torch.equal(a, render("C0805-0010", "bridged", _rng(7)))


def test_batch_rendering_matches_in_any_chunking():
    defects = [None, "missing", None, "damaged"] * 10  # 40 images: more than one chunk
    batch = render_batch("U-TSSOP16-0001", defects, _rng(1))
    assert batch.shape == (40, 3, 64, 64)
    again = render_batch("U-TSSOP16-0001", defects, _rng(1))
    assert torch.equal(batch, again)


@pytest.mark.parametrize("component_type", SOME_TYPES)
def test_each_defect_changes_the_image_measurably(component_type):
    clean = render(component_type, None, _rng(11))
    for kind in DEFECT_KINDS:
        defective = render(component_type, kind, _rng(11))  # same rng state: same nuisance
        changed = ((defective - clean).abs().sum(0) > 0.15).float().mean().item()
        assert changed > 0.004, f"{kind} on {component_type} changed only {changed:.4f} of pixels"
        # ... and only the defect: the board around it is the same picture.
        assert changed < 0.6


def test_defect_rate_is_respected_and_kinds_are_uniform():
    rng = _rng(5)
    defects = [sample_component("R0402-0001", rng, defect_rate=0.1, size=16)[1] for _ in range(2000)]
    hits = [d for d in defects if d is not None]
    assert abs(len(hits) / 2000 - 0.1) < 0.025  # ~4 standard deviations
    _, batch_defects = sample_batch("R0402-0001", 2000, _rng(6), defect_rate=0.5, size=8)
    counts = [batch_defects.count(k) for k in DEFECT_KINDS]
    assert abs(sum(counts) / 2000 - 0.5) < 0.05
    assert min(counts) > 120  # ~200 each


def test_bad_arguments_say_how_to_fix_them():
    with pytest.raises(ValueError, match="one of"):
        render("R0402-0001", "scorched", _rng())
    with pytest.raises(ValueError, match="probability"):
        sample_component("R0402-0001", _rng(), defect_rate=1.5)
    with pytest.raises(ValueError, match="size"):
        render("R0402-0001", None, _rng(), size=4)


# --- training (coserve.zoo.pcb_train) -----------------------------------------------------
# One torch thread: on a shared 2-core machine, two threads that wait on each other are
# many times slower than one.


def _layout(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def test_train_classifier_decides_well_above_chance(tmp_path):
    from safetensors.torch import load_file, save_file

    from coserve.zoo.pcb_train import train_classifier

    torch.manual_seed(0)
    model = ResNetClassifier(depth=10, width=16)
    layout = _layout(model)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    report = train_classifier(model, "C0805-0001", seed=1, num_train=192, finetune_steps=24,
                              num_threads=1)
    assert torch.equal(torch.rand(3), expected), "training must not move torch's global RNG"
    assert report.method == "lane"
    assert report.accuracy_balanced >= 0.85, report
    assert report.accuracy_at_10pct >= 0.85, report
    assert report.recall_by_kind["missing"] >= 0.9  # the most visible defect
    # A plain ResNetClassifier still: same layout, and the weights round-trip through
    # safetensors into a fresh skeleton with the same decisions.
    assert _layout(model) == layout
    save_file(model.state_dict(), tmp_path / "cls.safetensors")
    loaded = ResNetClassifier(depth=10, width=16).eval()
    loaded.load_state_dict(load_file(tmp_path / "cls.safetensors"))
    images = render_batch("C0805-0001", [None, "missing", "shifted", None], _rng(9))
    with torch.inference_mode():
        assert torch.allclose(model(images), loaded(images), atol=1e-5)
        labels = [d.label_index for d in loaded.decode(loaded(images))]
    assert labels[1] == 1  # the missing part is flagged


def test_train_classifier_is_deterministic_per_seed():
    from coserve.zoo.pcb_train import train_classifier

    def trained(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = ResNetClassifier(depth=10, width=16)
        train_classifier(model, "R0402-0001", seed=seed, num_train=32, finetune_steps=2,
                         num_threads=1)
        return model.state_dict()

    a, b, c = trained(1), trained(1), trained(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_narrow_models_fall_back_to_random_features():
    from coserve.zoo.pcb_train import train_classifier

    torch.manual_seed(0)
    model = ResNetClassifier(depth=10, width=8)  # too narrow for the lane
    report = train_classifier(model, "C0805-0001", seed=1, num_train=128, num_threads=1)
    assert report.method == "random-features"
    assert report.accuracy_balanced > 0.55
