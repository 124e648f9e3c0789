"""Executors: the binder gives the same outputs as functional_call and leaves nothing
bound; a CUDA executor runs on its own stream with pinned staging and answers what the
CPU does (those tests run only where torch sees a GPU)."""

import pytest
import torch
from torch.func import functional_call

from coserve.architectures import ResNetClassifier, YoloDetector
from coserve.errors import ExpertError
from coserve.executors.executor import Binder, Executor

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SHAPE = (3, 32, 32)


def _experts():
    """Two architectures with real (seeded) weights, and their weightless skeletons."""
    torch.manual_seed(0)
    real = {"cls": ResNetClassifier(depth=18, width=16, num_classes=2).eval(),
            "det": YoloDetector(depth_multiple=0.33, width_multiple=0.25, num_classes=2).eval()}
    with torch.device("meta"):
        skeletons = {"cls": ResNetClassifier(depth=18, width=16, num_classes=2).eval(),
                     "det": YoloDetector(depth_multiple=0.33, width_multiple=0.25,
                                         num_classes=2).eval()}
    tensors = {name: dict(m.state_dict()) for name, m in real.items()}
    return real, skeletons, tensors


def _inputs(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g) for _ in range(n)]


def test_cpu_executor_answers_as_functional_call_and_the_module():
    real, skeletons, tensors = _experts()
    executor = Executor(0, "cpu", skeletons)
    for arch in ("cls", "det", "cls"):  # switching back and forth rebinds each time
        inputs = _inputs(5)
        x = torch.stack(inputs)
        with torch.inference_mode():
            expected = skeletons[arch].decode(functional_call(skeletons[arch], tensors[arch], (x,)))
            direct = real[arch].decode(real[arch](x))
        assert executor.execute(arch, tensors[arch], inputs) == expected == direct
    assert executor.stream is None


def test_binder_puts_the_skeletons_own_tensors_back():
    _, skeletons, tensors = _experts()
    skeleton = skeletons["det"]
    binder = Binder(skeleton)
    before = {k: v for k, v in skeleton.state_dict(keep_vars=True).items()}
    with binder.bound(tensors["det"]):
        bound = skeleton.state_dict(keep_vars=True)
        assert all(bound[k] is tensors["det"][k] for k in before)
    after = skeleton.state_dict(keep_vars=True)
    assert all(after[k] is before[k] and after[k].is_meta for k in before)


def test_binder_restores_after_a_failing_forward():
    _, skeletons, tensors = _experts()
    executor = Executor(0, "cpu", skeletons)
    with pytest.raises(RuntimeError):
        executor.execute("cls", tensors["cls"], [torch.randn(3, 7)])  # wrong rank
    assert all(t.is_meta for t in skeletons["cls"].state_dict().values())


def test_missing_weights_are_an_expert_error_that_names_the_tensor():
    _, skeletons, tensors = _experts()
    partial = dict(tensors["cls"])
    missing = sorted(partial)[3]
    del partial[missing]
    with pytest.raises(ExpertError, match=missing):
        Executor(0, "cpu", skeletons).execute("cls", partial, _inputs(1))
    assert all(t.is_meta for t in skeletons["cls"].state_dict().values())


# -- CUDA (skipped without a GPU) ----------------------------------------------------------
def _close(a, b, tol=1e-3):
    """Decoded details (plain numbers, strings, lists, dicts) equal within `tol`."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return abs(a - b) <= tol * max(1.0, abs(b))
    return a == b


def _on(device, tensors):
    return {k: v.to(device) for k, v in tensors.items()}


@needs_cuda
def test_cuda_executor_matches_the_cpu_on_its_own_stream():
    real, skeletons, tensors = _experts()
    _, gpu_skeletons, _ = _experts()
    cpu = Executor(0, "cpu", skeletons)
    gpu = Executor(1, "cuda:0", gpu_skeletons)
    seen = []
    hook = gpu_skeletons["cls"].register_forward_pre_hook(
        lambda module, args: seen.append((torch.cuda.current_stream("cuda:0"), args[0].device)))
    inputs = _inputs(6)
    on_gpu = gpu.execute("cls", _on("cuda:0", tensors["cls"]), inputs)
    hook.remove()
    expected = cpu.execute("cls", tensors["cls"], inputs)
    assert [d.label_index for d in on_gpu] == [d.label_index for d in expected]
    for a, b in zip(on_gpu, expected, strict=True):
        assert _close(a.detail, b.detail)
    assert seen == [(gpu.stream, torch.device("cuda:0"))]
    assert gpu.stream != torch.cuda.default_stream("cuda:0")


@needs_cuda
def test_cuda_executors_have_their_own_streams_and_reuse_pinned_staging():
    _, a_skeletons, tensors = _experts()
    _, b_skeletons, _ = _experts()
    a, b = Executor(0, "cuda:0", a_skeletons), Executor(1, "cuda:0", b_skeletons)
    assert a.stream != b.stream
    weights = _on("cuda:0", tensors["det"])
    first = a.execute("det", weights, _inputs(4))
    staged = a._cuda._buffers["in"]  # white-box: the pinned buffer is made once
    assert staged.is_pinned()
    assert a.execute("det", weights, _inputs(2)) is not None
    assert a._cuda._buffers["in"] is staged
    again = b.execute("det", weights, _inputs(4))
    assert [d.label_index for d in again] == [d.label_index for d in first]


class _Tied(torch.nn.Module):
    """Two layers sharing one weight, as a file saved without duplicates stores it once."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 4, bias=False)
        self.b = torch.nn.Linear(4, 4, bias=False)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(self.a(x))


def test_a_tied_weight_is_bound_from_its_first_name():
    torch.manual_seed(0)
    real = _Tied()
    with torch.device("meta"):
        skeleton = _Tied()
    x = torch.randn(2, 4)
    with torch.inference_mode(), Binder(skeleton).bound({"a.weight": real.a.weight.detach()}):
        assert torch.equal(skeleton(x), real(x))
