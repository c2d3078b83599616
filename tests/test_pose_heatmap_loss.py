"""pose_heatmap_loss and render_heatmaps: every backend against the reference."""

from __future__ import annotations

import collections
import importlib
import math
import os
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from drpose import _extension
from drpose._memory import peak_memory_bytes
from drpose.ops import pose_heatmap_loss, pose_heatmap_loss_reference, render_heatmaps
from drpose.ops._dispatch import resolve_backend

BACKENDS = ["cpu", "triton"]
# (B, V, J, H, W): an odd size, a tiny one, and one wider than a Triton tile
SHAPES = [(2, 3, 4, 37, 53), (1, 1, 1, 5, 3), (1, 2, 2, 40, 41)]


def make_inputs(shape, dtype, *, seed=0, spread=1.0, p_visible=0.7):
    batch, views, joints, height, width = shape
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    # keypoints partly outside the map: spread > 1 scatters them beyond the borders
    frac = (torch.rand(batch, views, joints, 2, generator=gen, dtype=torch.float64) - 0.5) * spread
    keypoints = (frac + 0.5) * torch.tensor([width - 1, height - 1], dtype=torch.float64)
    visible = torch.rand(batch, views, joints, generator=gen) < p_visible
    return logits.to(dtype), keypoints.to(dtype), visible


def grads(fn, logits, keypoints, visible, upstream, **kwargs):
    logits = logits.detach().requires_grad_()
    keypoints = keypoints.detach().requires_grad_()
    out = fn(logits, keypoints, visible, reduction="none", **kwargs)
    grad_logits, grad_keypoints = torch.autograd.grad(out, (logits, keypoints), upstream)
    return out.detach(), grad_logits, grad_keypoints


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("loss", ["bce", "mse"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_matches_reference(backend, shape, loss, dtype, tol):
    logits, keypoints, visible = make_inputs(shape, dtype, spread=1.4)
    upstream = torch.randn(shape[0], dtype=dtype)  # any upstream gradient, reduction="none"
    expected = grads(pose_heatmap_loss_reference, logits, keypoints, visible, upstream,
                     sigma=2.5, loss=loss)
    got = grads(pose_heatmap_loss, logits, keypoints, visible, upstream, sigma=2.5, loss=loss,
                backend=backend)
    for name, e, g in zip(("loss", "grad_logits", "grad_keypoints"), expected, got, strict=True):
        assert g.dtype == e.dtype, name
        scale = e.abs().max().item() + 1e-30
        torch.testing.assert_close(g, e, rtol=tol, atol=tol * scale, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reductions(backend, reduction):
    logits, keypoints, visible = make_inputs((3, 2, 3, 9, 11), torch.float64)
    logits.requires_grad_()
    expected = pose_heatmap_loss_reference(logits, keypoints, visible, reduction=reduction)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    got = pose_heatmap_loss(logits, keypoints, visible, reduction=reduction, backend=backend)
    (got_grad,) = torch.autograd.grad(got, logits)
    assert got.shape == ()
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-10, atol=1e-16)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sigma", [0.3, 40.0])
def test_sigma_extremes(backend, sigma):
    logits, keypoints, visible = make_inputs((1, 2, 3, 13, 17), torch.float64, seed=3)
    upstream = torch.ones(1, dtype=torch.float64)
    expected = grads(pose_heatmap_loss_reference, logits, keypoints, visible, upstream,
                     sigma=sigma)
    got = grads(pose_heatmap_loss, logits, keypoints, visible, upstream, sigma=sigma,
                backend=backend)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("backend", ["torch", *BACKENDS])
def test_all_invisible_gives_zero_loss_and_gradient(backend):
    logits, keypoints, _ = make_inputs((2, 2, 3, 7, 9), torch.float64)
    visible = torch.zeros(2, 2, 3, dtype=torch.bool)
    visible[1, 0, 2] = True  # sample 1 keeps one map, sample 0 has none
    out, grad_logits, grad_keypoints = grads(pose_heatmap_loss, logits, keypoints, visible,
                                             torch.ones(2, dtype=torch.float64),
                                             backend=backend)
    assert out[0] == 0 and out[1] > 0
    assert grad_logits[0].abs().sum() == 0 and grad_keypoints[0].abs().sum() == 0
    mask = torch.zeros_like(grad_logits[1], dtype=torch.bool)
    mask[0, 2] = True
    assert grad_logits[1][~mask].abs().sum() == 0 and grad_logits[1][mask].abs().sum() > 0


@pytest.mark.parametrize("backend", ["torch", *BACKENDS])
def test_empty_batch(backend):
    logits = torch.zeros(0, 6, 23, 8, 8, requires_grad=True)
    keypoints = torch.zeros(0, 6, 23, 2)
    out = pose_heatmap_loss(logits, keypoints, backend=backend)
    assert out.shape == () and out.item() == 0
    out.backward()
    assert logits.grad.shape == logits.shape
    assert pose_heatmap_loss(logits, keypoints, reduction="none", backend=backend).shape == (0,)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("upstream_kind,bound", [("ones", 2), ("random", 3)])
def test_half_precision_accumulates_in_float32(backend, dtype, upstream_kind, bound):
    """Half inputs: error against float64 at most ~2x that of the torch reference in fp32.

    The one-pass gradient is kept in the logits' dtype and scaled by the upstream gradient in the
    backward: with an upstream gradient of 1 (loss.backward() of a "mean" or "sum") it is rounded
    once, as the reference's; with any other it is rounded twice (kept, then scaled), each time
    by at most half an ulp of its binade or the next: 1.5 ulp against the reference's 0.5, so 3x.
    """
    logits, keypoints, visible = make_inputs((2, 2, 3, 19, 23), dtype, seed=5)
    upstream = (torch.ones(2) if upstream_kind == "ones"
                else torch.randn(2, generator=torch.Generator().manual_seed(6)))
    exact = grads(pose_heatmap_loss_reference, logits.double(), keypoints.double(), visible,
                  upstream.double())
    ref = grads(pose_heatmap_loss_reference, logits, keypoints, visible, upstream)
    got = grads(pose_heatmap_loss, logits, keypoints, visible, upstream, backend=backend)
    assert got[0].dtype == torch.float32 and got[1].dtype == dtype
    for name, e, r, g in zip(("loss", "grad_logits", "grad_keypoints"), exact, ref, got,
                            strict=True):
        ref_err = (r.double() - e).abs().max().item()
        got_err = (g.double() - e).abs().max().item()
        limit = (bound if name == "grad_logits" else 2) * ref_err + 1e-6 * e.abs().max().item()
        assert got_err <= limit, (name, got_err, ref_err)


class CountingCalls:
    """Stands in for a kernel module: forwards every attribute and counts the calls by name."""

    def __init__(self, module):
        self.module, self.calls, self.returned = module, collections.Counter(), {}

    def __getattr__(self, name):
        fn = getattr(self.module, name)
        if not callable(fn):
            return fn

        def call(*args, **kwargs):
            self.calls[name] += 1
            self.returned[name] = out = fn(*args, **kwargs)
            return out

        return call


def count_kernel_calls(monkeypatch, backend):
    if backend == "cpu":
        counter = CountingCalls(_extension.require())
        monkeypatch.setattr(_extension, "require", lambda: counter)
        return counter, "pose_heatmap_loss_forward_grad_cpu"
    kernels = importlib.import_module("drpose_kernels.pose_heatmap_loss")
    counter = CountingCalls(kernels)
    monkeypatch.setitem(sys.modules, "drpose_kernels.pose_heatmap_loss", counter)
    monkeypatch.setattr(importlib.import_module("drpose_kernels"), "pose_heatmap_loss", counter)
    return counter, "map_loss_forward_grad"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_one_pass_backward_scales_the_kept_gradient(monkeypatch, backend, reduction):
    """One kernel call for forward + backward; the gradient handed to logits is the kept one."""
    logits, keypoints, visible = make_inputs((2, 2, 3, 9, 11), torch.float32, seed=11)
    upstream = torch.tensor([0.7, -1.3])
    expected = grads(pose_heatmap_loss_reference, logits, keypoints, visible, upstream)
    counter, one_pass = count_kernel_calls(monkeypatch, backend)
    logits.requires_grad_()
    keypoints.requires_grad_()
    out = pose_heatmap_loss(logits, keypoints, visible, reduction=reduction, backend=backend)
    out.backward(upstream if reduction == "none" else None)
    assert dict(counter.calls) == {one_pass: 1}  # no forward-only, no backward kernel
    kept = counter.returned[one_pass][1]
    assert logits.grad.data_ptr() == kept.data_ptr()  # scaled in place, not copied
    if reduction == "none":
        torch.testing.assert_close(logits.grad, expected[1], rtol=2e-5, atol=1e-9)
        torch.testing.assert_close(keypoints.grad, expected[2], rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("upstream", [1.0, 0.3])
def test_one_pass_allocates_only_the_gradient(backend, upstream):
    """Peak tensor memory of forward + backward: the logits' gradient and a few (M,) vectors."""
    logits, keypoints, visible = make_inputs((2, 3, 4, 40, 41), torch.float32, seed=14)
    logits.requires_grad_()

    def step():
        (pose_heatmap_loss(logits, keypoints, visible, backend=backend) * upstream).backward()

    peak = peak_memory_bytes(step)
    assert logits.nbytes <= peak < logits.nbytes + 4096, (peak, logits.nbytes)


@pytest.mark.parametrize("backend", BACKENDS)
def test_retained_graph_second_backward_recomputes(backend):
    logits, keypoints, visible = make_inputs((1, 2, 2, 7, 8), torch.float64, seed=12)
    logits.requires_grad_()
    keypoints.requires_grad_()
    out = pose_heatmap_loss(logits, keypoints, visible, reduction="sum", backend=backend) * 3.0
    first = [g.clone() for g in torch.autograd.grad(out, (logits, keypoints), retain_graph=True)]
    second = torch.autograd.grad(out, (logits, keypoints))
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-18)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keypoint_only_and_no_grad_paths(monkeypatch, backend):
    """Logits without grad: the loss-only kernel, and the keypoints' gradient from the backward."""
    logits, keypoints, visible = make_inputs((1, 2, 3, 8, 9), torch.float64, seed=13)
    expected = grads(pose_heatmap_loss_reference, logits, keypoints, visible,
                     torch.ones(1, dtype=torch.float64))[2]
    counter, one_pass = count_kernel_calls(monkeypatch, backend)
    keypoints.requires_grad_()
    pose_heatmap_loss(logits, keypoints, visible, reduction="sum", backend=backend).backward()
    torch.testing.assert_close(keypoints.grad, expected, rtol=1e-10, atol=1e-14)
    with torch.no_grad():
        pose_heatmap_loss(logits.requires_grad_(), keypoints, visible, backend=backend)
    assert counter.calls[one_pass] == 0


def test_gradcheck_reference():
    logits, keypoints, visible = make_inputs((2, 2, 2, 5, 6), torch.float64, seed=7)
    for loss in ("bce", "mse"):
        assert torch.autograd.gradcheck(
            lambda z, k, loss=loss: pose_heatmap_loss_reference(z, k, visible, sigma=1.5,
                                                                loss=loss, reduction="none"),
            (logits.requires_grad_(), keypoints.requires_grad_()))


def test_gradcheck_cpu_kernel():
    logits, keypoints, visible = make_inputs((2, 2, 2, 5, 6), torch.float64, seed=8)
    assert torch.autograd.gradcheck(
        lambda z, k: pose_heatmap_loss(z, k, visible, sigma=1.5, reduction="none",
                                       backend="cpu"),
        (logits.requires_grad_(), keypoints.requires_grad_()))


def test_keypoints_without_grad_get_none():
    logits, keypoints, visible = make_inputs((1, 2, 2, 6, 6), torch.float32)
    logits.requires_grad_()
    pose_heatmap_loss(logits, keypoints, visible, backend="cpu").backward()
    assert logits.grad is not None and keypoints.grad is None


def test_torch_compile_traces_the_op():
    logits, keypoints, visible = make_inputs((2, 3, 4, 12, 10), torch.float32)

    def step(z, k):
        return pose_heatmap_loss(z, k, visible, backend="cpu") * 2.0

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    z1 = logits.clone().requires_grad_()
    z2 = logits.clone().requires_grad_()
    torch.testing.assert_close(compiled(z1, keypoints), step(z2, keypoints))
    compiled(z1, keypoints).backward()
    step(z2, keypoints).backward()
    torch.testing.assert_close(z1.grad, z2.grad)


def test_checks_trace_without_graph_break():
    """The size and visibility checks of render_heatmaps (and so of the reference) compile."""
    logits, keypoints, visible = make_inputs((1, 2, 3, 8, 9), torch.float32)
    compiled = torch.compile(pose_heatmap_loss_reference, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(logits, keypoints, visible),
                               pose_heatmap_loss_reference(logits, keypoints, visible))
    maps = torch.compile(render_heatmaps, fullgraph=True, backend="eager")
    torch.testing.assert_close(maps(keypoints, visible, size=(8, 9)),
                               render_heatmaps(keypoints, visible, size=(8, 9)))


def test_opcheck():
    logits, keypoints, _ = make_inputs((1, 2, 2, 6, 7), torch.float32)
    weight = torch.full((4,), 1 / 42)
    args = (logits.reshape(4, 6, 7).requires_grad_(), keypoints.reshape(4, 2), weight, 2.0,
            "bce", "cpu")
    torch.library.opcheck(torch.ops.drpose.pose_heatmap_map_loss.default, args)


def test_render_heatmaps_formula():
    keypoints = torch.tensor([[[3.0, 2.0], [4.5, -1.0]]], dtype=torch.float64)
    visible = torch.tensor([[True, False]])
    maps = render_heatmaps(keypoints, visible, size=(5, 7), sigma=1.5)
    assert maps.shape == (1, 2, 5, 7)
    assert maps[0, 0, 2, 3] == 1.0  # peak at (x=3, y=2): row y, column x
    expected = math.exp(-((6 - 3) ** 2 + (4 - 2) ** 2) / (2 * 1.5**2))
    assert maps[0, 0, 4, 6].item() == pytest.approx(expected, rel=1e-14)
    assert maps[0, 1].abs().sum() == 0


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(visible=torch.ones(2, 3)), TypeError, "bool"),
        (dict(visible=torch.ones(3, dtype=torch.bool)), ValueError, r"shape.*\(2, 3\)"),
        (dict(size=(5.5, 7)), ValueError, "positive ints"),
        (dict(size=(5.0, 7)), ValueError, "positive ints"),
        (dict(size=(0, 7)), ValueError, "positive ints"),
        (dict(size=(5, -1)), ValueError, "positive ints"),
        (dict(size=(5,)), ValueError, "positive ints"),
        (dict(size=7), ValueError, "positive ints"),
        (dict(size=(1_000_000, 1_000_000)), ValueError,
         r"size=\(1000000, 1000000\) asks for a \(2, 3, 1000000, 1000000\) torch.float32 "
         r"output of .* GiB, more than the .* GiB of memory of cpu"),
    ],
)
def test_render_heatmaps_refuses_bad_visibility_and_sizes(kwargs, error, match):
    args = dict(keypoints=torch.zeros(2, 3, 2), visible=None, size=(5, 7))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        render_heatmaps(args.pop("keypoints"), args.pop("visible"), **args)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(logits=torch.zeros(1, 2, 3, 4, 4, dtype=torch.int64)), TypeError, "floating"),
        (dict(logits=torch.zeros(1, 2, 3, 4)), ValueError, "5 dimensions"),
        (dict(keypoints=torch.zeros(1, 2, 4, 2)), ValueError, r"\(B, V, J, 2\)"),
        (dict(visible=torch.ones(1, 2, 3)), TypeError, "bool"),
        (dict(visible=torch.ones(1, 3, 3, dtype=torch.bool)), ValueError, r"\(B, V, J\)"),
        (dict(sigma=0.0), ValueError, "sigma"),
        (dict(sigma=-1.0), ValueError, "sigma"),
        (dict(loss="l1"), ValueError, "loss"),
        (dict(reduction="max"), ValueError, "reduction"),
        (dict(backend="cuda"), ValueError, "backend"),
        (dict(keypoints=torch.zeros(1, 2, 3, 2, device="meta")), ValueError, "one device"),
        (dict(logits=[[0.0]]), TypeError, "torch.Tensor"),
    ],
)
def test_bad_input_errors_name_the_argument(kwargs, error, match):
    args = dict(logits=torch.zeros(1, 2, 3, 4, 4), keypoints=torch.zeros(1, 2, 3, 2),
                visible=None, sigma=2.0, loss="bce", reduction="mean", backend="auto")
    args.update(kwargs)
    with pytest.raises(error, match=match):
        pose_heatmap_loss(args.pop("logits"), args.pop("keypoints"), args.pop("visible"), **args)


def test_auto_backend_picks_cpu_kernel():
    assert resolve_backend("op", "auto", torch.device("cpu")) == "cpu"


def test_missing_extension_falls_back_with_one_warning(monkeypatch):
    real_import = importlib.import_module

    def no_extension(name, *args):
        if name == "drpose._C":
            raise ImportError("simulated: not built")
        return real_import(name, *args)

    monkeypatch.setattr(_extension.importlib, "import_module", no_extension)
    _extension.load.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="pip install -e"):
            assert resolve_backend("op", "auto", torch.device("cpu")) == "torch"
        logits, keypoints, visible = make_inputs((1, 2, 2, 6, 6), torch.float32)
        out = pose_heatmap_loss(logits, keypoints, visible)  # no second warning, torch result
        torch.testing.assert_close(out, pose_heatmap_loss_reference(logits, keypoints, visible))
        with pytest.raises(RuntimeError, match="no-build-isolation"):
            pose_heatmap_loss(logits, keypoints, visible, backend="cpu")
    finally:
        _extension.load.cache_clear()


def test_cuda_backend_needs_cuda_tensors_and_only_the_loss_has_it():
    logits = torch.zeros(1, 1, 1, 4, 4)
    keypoints = torch.zeros(1, 1, 1, 2)
    with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
        pose_heatmap_loss(logits, keypoints, backend="cuda")
    from drpose.ops import row_attention

    q = torch.zeros(6, 1, 4, 8)
    with pytest.raises(ValueError, match="backend must be one of"):
        row_attention(q, q, q, views=6, height=2, backend="cuda")


def _vm_flags(address: int) -> list[str]:
    """The VmFlags of the mapping of this process that holds ``address`` (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                low, high = (int(part, 16) for part in head.split("-"))
                inside = low <= address < high
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not os.path.isdir("/sys/kernel/mm/transparent_hugepage"),
                    reason="a Linux kernel with transparent huge pages")
@pytest.mark.skipif(not _extension.available(), reason="drpose._C not built")
def test_one_pass_gradient_is_advised_huge_pages():
    """The kept gradient of a large map stack is madvise(MADV_HUGEPAGE)'d before its first write
    (VmFlags "hg"), whether or not the kernel then finds 2 MB pages; values are tested above."""
    logits = torch.randn(1, 1, 23, 256, 256).requires_grad_()  # 6 MB: whole 2 MB pages inside
    keypoints = torch.rand(1, 1, 23, 2) * 256
    pose_heatmap_loss(logits, keypoints, backend="cpu").backward()
    hugepage_aligned = (logits.grad.data_ptr() + (2 << 20) - 1) & ~((2 << 20) - 1)
    assert "hg" in _vm_flags(hugepage_aligned)


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next(line for line in f if line.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        return set()


@pytest.fixture(params=["avx512", "avx2", "baseline"])
def cpu_isa(request):
    """Runs a test with each CPU map loop the build has: in a portable x86 build AVX-512, AVX2 +
    FMA and the baseline (SSE2), each where the CPU has it; in any other build its one loop."""
    if not _extension.available():
        pytest.skip("drpose._C not built")
    chosen = _extension.require().pose_heatmap_loss_cpu_isa(request.param)
    try:
        if chosen == "build" and request.param != "avx512":
            pytest.skip("one loop in this build, run under 'avx512'")
        if chosen not in ("build", request.param):
            pytest.skip(f"this CPU has no {request.param}")
        yield chosen
    finally:
        _extension.require().pose_heatmap_loss_cpu_isa("auto")


@pytest.mark.parametrize("shape", [*SHAPES, (1, 1, 3, 24, 96)])
@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_each_cpu_instruction_set_matches_reference(cpu_isa, shape, loss):
    """float32 one-pass loss and gradients, the forward alone, and the two-pass backward, for
    the loop the fixture chose (the widest shape has rows of 12 AVX2 registers)."""
    assert cpu_isa in ("avx512", "avx2", "baseline", "build")
    logits, keypoints, visible = make_inputs(shape, torch.float32, seed=3, spread=1.4)
    upstream = torch.randn(shape[0])
    expected = grads(pose_heatmap_loss_reference, logits, keypoints, visible, upstream,
                     sigma=1.5, loss=loss)
    got = grads(pose_heatmap_loss, logits, keypoints, visible, upstream, sigma=1.5, loss=loss,
                backend="cpu")
    heatmap_op = importlib.import_module("drpose.ops.pose_heatmap_loss")
    one_pass = heatmap_op.ONE_PASS_BACKENDS
    heatmap_op.ONE_PASS_BACKENDS = ()
    try:
        two_pass = grads(pose_heatmap_loss, logits, keypoints, visible, upstream, sigma=1.5,
                         loss=loss, backend="cpu")
    finally:
        heatmap_op.ONE_PASS_BACKENDS = one_pass
    with torch.no_grad():
        forward = pose_heatmap_loss(logits, keypoints, visible, sigma=1.5, loss=loss,
                                    reduction="none", backend="cpu")
    for name, e, g, t in zip(("loss", "grad_logits", "grad_keypoints"), expected, got, two_pass,
                             strict=True):
        scale = e.abs().max().item() + 1e-30
        torch.testing.assert_close(g, e, rtol=2e-5, atol=2e-5 * scale, msg=name)
        torch.testing.assert_close(t, e, rtol=2e-5, atol=2e-5 * scale, msg=f"two-pass {name}")
    loss_scale = expected[0].abs().max().item()
    torch.testing.assert_close(forward, expected[0], rtol=2e-5, atol=2e-5 * loss_scale)


def test_cpu_instruction_set_choice_is_checked():
    if not _extension.available():
        pytest.skip("drpose._C not built")
    with pytest.raises(RuntimeError, match="'avx2' or 'baseline'"):
        _extension.require().pose_heatmap_loss_cpu_isa("sse4")
    assert _extension.require().pose_heatmap_loss_cpu_isa() in ("avx512", "avx2", "baseline",
                                                                "build")


def test_auto_picks_the_widest_loop_the_cpu_has():
    """A portable x86 build runs its AVX-512 loop on a CPU with AVX-512 (F, VL, BW, DQ), else its
    AVX2 + FMA loop on a CPU with those (the kernel is 1.9x / 3x faster than the next narrower)."""
    if not _extension.available():
        pytest.skip("drpose._C not built")
    chosen = _extension.require().pose_heatmap_loss_cpu_isa("auto")
    if chosen == "build":
        pytest.skip("a build for its own target (DRPOSE_NATIVE=1 or not x86) has one loop")
    flags = cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags")
    if {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= flags:
        assert chosen == "avx512"
    elif {"avx2", "fma"} <= flags:
        assert chosen == "avx2"
    else:
        assert chosen == "baseline"


def test_float_polynomials_are_the_minimax_fits():
    """The coefficients in csrc/pose_heatmap_loss_math.h are what
    tools/fit_heatmap_polynomials.py fits, each fit below float's rounding (2^-24 = 6e-8)."""
    root = Path(__file__).resolve().parents[1]
    tool = runpy.run_path(str(root / "tools" / "fit_heatmap_polynomials.py"))
    header = (root / "csrc" / "pose_heatmap_loss_math.h").read_text()

    def constants(function: str) -> list[float]:
        body = header[header.index(function):]
        body = body[:body.index("\n}\n")]
        return [float(c) for c in re.findall(r"p = (?:p \* \w+ \+ )?(?:2\.0f \* )?([0-9.e+-]+)f;",
                                             body)]

    p, error = tool["fit_exp"]()
    assert error < 6e-9
    exp_consts = constants("DRPOSE_HD inline float exp_nonpositive(float x)")
    assert exp_consts[-2:] == [1.0, 1.0]  # the 1 + r + ... of e^r
    np.testing.assert_allclose(exp_consts[:-2][::-1], p, rtol=1e-8)

    q, error = tool["fit_log1p"]()
    assert error < 6e-9
    log_consts = constants("DRPOSE_HD inline void log1p_and_reciprocal(float e")
    assert log_consts[-1] == 2.0  # 2 (1 + w Q), the 2 folded into the coefficients
    np.testing.assert_allclose(log_consts[:-1][::-1], q, rtol=1e-8)
