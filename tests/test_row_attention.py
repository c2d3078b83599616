"""drpose.ops.row_attention against its reference, and the reference against a brute-force loop.

Accuracy rule (flash-attention's): a backend's error against the float64 reference is at most
twice the error of plain torch computing the same thing at the backend's precision. Triton runs
under ``TRITON_INTERPRET=1`` on CPU (root conftest.py), so its shapes are tiny and float32.

The interpreter computes a float32 ``tl.dot`` with numpy's matmul, i.e. the host's BLAS, whose
rounding depends on the CPU: on an AMD EPYC (2026-12-07) it gave the LONG_ROW backward's dk 1.1e-6
of error where dots rounded once from float64 give 3.5e-7 and plain torch (MKL) 3.2e-7, and the
rule failed there while it held on an Intel Xeon. So each float32 dot is computed in float64 and
rounded once (fixture below): the tests judge the kernels' algorithm (tiling, online softmax,
the backward's delta), not the host's BLAS; the dots of a GPU are not what they measure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import triton.runtime.interpreter as triton_interpreter

from drpose.ops import row_attention, row_attention_reference
from drpose_kernels.row_attention import (
    Tile,
    Tiles,
    all_tiles,
    choose_tiles,
    row_attention_backward,
    row_attention_forward,
)


@dataclass(frozen=True)
class Shape:
    batch: int
    views: int
    height: int
    width: int
    heads: int
    head_dim: int

    @property
    def qkv(self) -> tuple[int, int, int, int]:
        return (self.batch * self.views, self.heads, self.height * self.width, self.head_dim)


ODD = Shape(batch=1, views=6, height=5, width=7, heads=2, head_dim=16)
ODD_D = Shape(batch=2, views=3, height=2, width=5, heads=1, head_dim=24)  # D padded to 32
SINGLE_VIEW = Shape(batch=2, views=1, height=3, width=20, heads=2, head_dim=16)
SHAPES = [ODD, ODD_D, SINGLE_VIEW]


@pytest.fixture(autouse=True)
def float32_dots_rounded_once(monkeypatch):
    """Every float32 tl.dot of the interpreter as float64 products and sums rounded to float32."""
    builder = triton_interpreter.InterpreterBuilder
    host_dot = builder.create_dot

    def create_dot(self, a, b, acc, *precision):
        if a.data.dtype != np.float32 or b.data.dtype != np.float32:
            return host_dot(self, a, b, acc, *precision)
        exact = np.matmul(a.data.astype(np.float64), b.data.astype(np.float64)) + acc.data
        return triton_interpreter.TensorHandle(exact.astype(acc.data.dtype), acc.dtype.scalar)

    monkeypatch.setattr(builder, "create_dot", create_dot)


def random_qkv(shape: Shape, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape.qkv, generator=gen, dtype=torch.float64).to(dtype)
            for _ in range(3)]


def forward_and_grads(fn, q, k, v, grad_out):
    """Output and (dq, dk, dv) of ``fn(q, k, v)`` for the upstream gradient ``grad_out``."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
    return [out.detach(), *grads]


def plain_torch_attention(q, k, v, *, views: int, height: int) -> torch.Tensor:
    """Row attention computed entirely in the inputs' dtype: the precision baseline."""
    def rows(x):
        bv, n, hw, d = x.shape
        x = x.reshape(bv // views, views, n, height, hw // height, d).transpose(1, 3)
        return x.reshape(-1, n, views * (hw // height), d)

    qr, kr, vr = rows(q), rows(k), rows(v)
    probs = torch.softmax(qr @ kr.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    out = probs @ vr
    bh, n, vw, d = out.shape
    out = out.reshape(bh // height, height, n, views, vw // views, d).transpose(1, 3)
    return out.reshape(q.shape)


def assert_within_torch_error(results, baselines, exact, names=("out", "dq", "dk", "dv")):
    """error(result) <= 2 error(plain torch) + 2 rounding(values), as flash-attention's tests do.

    The rounding term is the largest change ``x + 0.3 - 0.3`` makes to the exact values rounded to
    the result's dtype: one unit of that dtype at the values' magnitude.
    """
    for name, got, base, want in zip(names, results, baselines, exact, strict=True):
        rounded = want.to(got.dtype)
        atol = 2 * (rounded + 0.3 - 0.3 - rounded).abs().max().item()
        err = (got.double() - want).abs().max().item()
        base_err = (base.double() - want).abs().max().item()
        assert err <= 2 * base_err + atol, (
            f"{name}: error {err:.3e} > 2 x plain torch's {base_err:.3e} + {atol:.3e}")


def brute_force(q, k, v, *, views: int, height: int) -> torch.Tensor:
    """One token at a time, by explicit (view, y, x) indexing: independent of any rearrange."""
    rows, heads, tokens, _ = q.shape
    width = tokens // height
    out = torch.empty_like(q)
    for row in range(rows):
        first_view_row = row - row % views
        for y in range(height):
            keys = [(first_view_row + view, y * width + x)
                    for view in range(views) for x in range(width)]
            for head in range(heads):
                kk = torch.stack([k[r, head, t] for r, t in keys])
                vv = torch.stack([v[r, head, t] for r, t in keys])
                for x in range(width):
                    query = q[row, head, y * width + x]
                    weights = torch.softmax(kk @ query / math.sqrt(q.shape[-1]), dim=0)
                    out[row, head, y * width + x] = weights @ vv
    return out


def test_reference_matches_brute_force():
    shape = Shape(batch=2, views=3, height=2, width=3, heads=2, head_dim=5)
    q, k, v = random_qkv(shape, torch.float64)
    got = row_attention_reference(q, k, v, views=shape.views, height=shape.height)
    torch.testing.assert_close(got, brute_force(q, k, v, views=shape.views, height=shape.height))


def test_reference_gradcheck():
    shape = Shape(batch=1, views=2, height=2, width=3, heads=1, head_dim=4)
    q, k, v = (t.requires_grad_() for t in random_qkv(shape, torch.float64))
    assert torch.autograd.gradcheck(
        lambda q, k, v: row_attention_reference(q, k, v, views=2, height=2, scale=0.7), (q, k, v))


def test_rows_do_not_mix():
    """Perturbing image row y of one view changes row y in every view of that sample, only."""
    shape = Shape(batch=2, views=3, height=4, width=5, heads=1, head_dim=8)
    q, k, v = random_qkv(shape, torch.float64)
    base = row_attention(q, k, v, views=3, height=4)
    v2 = v.clone()
    v2[4, :, 2 * 5:3 * 5] += 1.0  # sample 1, view 1, image row 2
    changed = (row_attention(q, k, v2, views=3, height=4) != base).reshape(2, 3, 1, 4, 5, 8)
    expected = torch.zeros_like(changed)
    expected[1, :, :, 2] = True
    assert torch.equal(changed, expected)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_float64_backends_match_reference(backend, shape):
    q, k, v = random_qkv(shape, torch.float64)
    grad_out = random_qkv(shape, torch.float64, seed=1)[0]
    opts = dict(views=shape.views, height=shape.height)
    got = forward_and_grads(lambda *t: row_attention(*t, **opts, backend=backend), q, k, v,
                            grad_out)
    want = forward_and_grads(lambda *t: row_attention_reference(*t, **opts), q, k, v, grad_out)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def _check_against_float64(shape, dtype, backend, seed=0, **kernel_opts):
    q, k, v = random_qkv(shape, dtype, seed=seed)
    grad_out = random_qkv(shape, dtype, seed=seed + 1)[0]
    opts = dict(views=shape.views, height=shape.height)
    exact = forward_and_grads(lambda *t: row_attention_reference(*t, **opts), q.double(),
                              k.double(), v.double(), grad_out.double())
    baseline = forward_and_grads(lambda *t: plain_torch_attention(*t, **opts), q, k, v, grad_out)
    got = forward_and_grads(lambda *t: row_attention(*t, **opts, backend=backend), q, k, v,
                            grad_out)
    assert all(g.dtype == dtype for g in got)
    assert_within_torch_error(got, baseline, exact)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("backend", ["cpu", "torch", "triton"])
def test_float32_backends_within_torch_error(backend, shape):
    _check_against_float64(shape, torch.float32, backend)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_cpu_path(dtype):
    _check_against_float64(ODD, dtype, "cpu")


def test_float16_triton():
    """16-bit operands in tl.dot, fp32 accumulation (bfloat16 dots are wrong in the interpreter)."""
    _check_against_float64(ODD, torch.float16, "triton")


@pytest.mark.parametrize("backend", ["cpu", "torch", "triton"])
@pytest.mark.parametrize("qkv_shape", [(0, 2, 35, 16), (6, 2, 0, 16), (6, 0, 35, 16)],
                         ids=["no-samples", "no-tokens", "no-heads"])
def test_empty_inputs(backend, qkv_shape):
    q = torch.randn(qkv_shape, requires_grad=True)
    out = row_attention(q, q, q, views=6, height=5, backend=backend)
    out.sum().backward()
    assert out.shape == qkv_shape
    assert q.grad.shape == qkv_shape


def _check_tiles(shape: Shape, tiles) -> None:
    """Forward (with lse2) and backward of the Triton kernels at the given tile configuration."""
    q, k, v = random_qkv(shape, torch.float32)
    grad_out = random_qkv(shape, torch.float32, seed=1)[0]
    opts = dict(views=shape.views, height=shape.height, scale=0.3)
    out, lse2 = row_attention_forward(q, k, v, **opts, tiles=tiles)
    grads = row_attention_backward(grad_out, q, k, v, out, lse2, **opts, tiles=tiles)
    exact = forward_and_grads(lambda *t: row_attention_reference(*t, **opts), q.double(),
                              k.double(), v.double(), grad_out.double())
    baseline = forward_and_grads(lambda *t: row_attention_reference(*t, **opts), q, k, v,
                                 grad_out)
    assert_within_torch_error([out, *grads], baseline, exact)
    b, v_, h, w, n, d = (shape.batch, shape.views, shape.height, shape.width, shape.heads,
                         shape.head_dim)
    scores = torch.einsum("rnid,rnjd->rnij", *(
        t.double().reshape(b, v_, n, h, w, d).permute(0, 3, 2, 1, 4, 5).reshape(b * h, n, v_ * w, d)
        for t in (q, k)))
    exact_lse = torch.logsumexp(scores * 0.3, dim=-1).reshape(b, h, n, v_, w)
    torch.testing.assert_close(  # float32 tolerances: lse2 is a float32 result
        (lse2.double() * math.log(2)).float(),
        exact_lse.permute(0, 3, 2, 1, 4).reshape(lse2.shape).float())


@pytest.mark.parametrize("blocks", [(16, 16), (16, 32), (32, 16)])
def test_triton_many_blocks(blocks):
    """Several query and key blocks per sequence, the last ones partly masked."""
    tile = Tile(*blocks, num_warps=4, num_stages=1)
    _check_tiles(ODD, Tiles(tile, tile, tile))


# 6 views x 25 tokens: 150 tokens, more than two tiles of 64 and one of 128, with masked tails.
LONG_ROW = Shape(batch=1, views=6, height=1, width=25, heads=2, head_dim=16)


@pytest.mark.parametrize("tile", sorted({(t.block_m, t.block_n) for t in all_tiles()}), ids=str)
def test_every_chosen_tile_matches_reference(tile):
    """Every (BLOCK_M, BLOCK_N) that choose_tiles can pick for any arch, dtype and head dim, run
    by all three kernels (fp32 values: the interpreter ignores warps and stages)."""
    chosen = Tile(*tile, num_warps=4, num_stages=1)
    _check_tiles(LONG_ROW, Tiles(chosen, chosen, chosen))


@pytest.mark.parametrize("arch", [80, 86, 89, 90])
def test_launch_config_follows_the_arch(arch, monkeypatch):
    """Under the interpreter the launcher configures for DRPOSE_TRITON_ARCH; each arch's own
    choice runs through the public op and matches the reference."""
    monkeypatch.setenv("DRPOSE_TRITON_ARCH", str(arch))
    _check_against_float64(LONG_ROW, torch.float32, "triton")


def test_tiles_depend_on_arch_and_dtype():
    half_80 = choose_tiles(80, torch.float16, 128)
    half_86 = choose_tiles(86, torch.float16, 128)
    assert half_86.dkdv.num_stages < half_80.dkdv.num_stages  # 99 KB of shared memory on sm_86
    fp32 = choose_tiles(80, torch.float32, 128)
    assert fp32.forward.block_m * fp32.forward.block_n < half_80.forward.block_m * \
        half_80.forward.block_n


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_strided_diffusers_layout_is_read_in_place(backend):
    """diffusers splits heads with view + transpose: (B*V, H*W, heads*D) -> (B*V, heads, H*W, D)."""
    shape = ODD
    gen = torch.Generator().manual_seed(3)
    rows, heads, tokens, head_dim = shape.qkv
    q, k, v = (torch.randn(rows, tokens, heads * head_dim, generator=gen)
               .view(rows, tokens, heads, head_dim).transpose(1, 2) for _ in range(3))
    assert not q.is_contiguous()
    opts = dict(views=shape.views, height=shape.height)
    grad_out = torch.randn(shape.qkv, generator=gen)
    got = forward_and_grads(lambda *t: row_attention(*t, **opts, backend=backend), q, k, v,
                            grad_out)
    exact = forward_and_grads(lambda *t: row_attention_reference(*t, **opts), q.double(),
                              k.double(), v.double(), grad_out.double())
    baseline = forward_and_grads(lambda *t: row_attention_reference(*t, **opts), q, k, v,
                                 grad_out)
    assert_within_torch_error(got, baseline, exact)


def test_opcheck():
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch of the op."""
    shape = Shape(batch=1, views=2, height=2, width=3, heads=1, head_dim=16)
    q, k, v = (t.float().requires_grad_() for t in random_qkv(shape, torch.float64))
    torch.library.opcheck(torch.ops.drpose.row_attention.default,
                          (q, k, v, shape.views, shape.height, 0.25))


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_torch_compile_fullgraph(backend):
    shape = Shape(batch=1, views=3, height=2, width=5, heads=2, head_dim=16)
    q, k, v = random_qkv(shape, torch.float32)
    grad_out = random_qkv(shape, torch.float32, seed=1)[0]
    opts = dict(views=shape.views, height=shape.height)

    def attend(q, k, v):
        return row_attention(q, k, v, **opts, backend=backend) * 2.0

    compiled = torch.compile(attend, fullgraph=True, backend="aot_eager")
    got = forward_and_grads(compiled, q, k, v, grad_out)
    want = forward_and_grads(attend, q, k, v, grad_out)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_auto_on_cpu_is_the_cpu_path():
    q, k, v = random_qkv(ODD, torch.float32)
    opts = dict(views=ODD.views, height=ODD.height)
    assert torch.equal(row_attention(q, k, v, **opts),
                       row_attention(q, k, v, **opts, backend="cpu"))


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda q, k, v: (q[0], k[0], v[0]), ValueError, "4 dimensions"),
        (lambda q, k, v: (q, k[:, :, :-1], v), ValueError, "k must have q's shape"),
        (lambda q, k, v: (q, k, v.double()), TypeError, "v must have q's dtype"),
        (lambda q, k, v: (q.long(), k.long(), v.long()), TypeError, "floating-point"),
        (lambda q, k, v: (q.numpy(), k, v), TypeError, "torch.Tensor"),
        (lambda q, k, v: (q, k, v.to("meta")), ValueError, "one device"),
    ],
    ids=["3-D", "shape", "dtype", "integer", "numpy", "device"],
)
def test_input_checks(change, error, match):
    q, k, v = random_qkv(ODD, torch.float32)
    with pytest.raises(error, match=match):
        row_attention(*change(q, k, v), views=ODD.views, height=ODD.height)


def test_layout_checks():
    q, k, v = random_qkv(ODD, torch.float32)
    with pytest.raises(ValueError, match="divisible by views = 4"):
        row_attention(q, k, v, views=4, height=ODD.height)
    with pytest.raises(ValueError, match="divisible by height = 4"):
        row_attention(q, k, v, views=ODD.views, height=4)
    with pytest.raises(ValueError, match="head dim D"):
        row_attention(q[..., :0], k[..., :0], v[..., :0], views=ODD.views, height=ODD.height)
    with pytest.raises(ValueError, match="backend must be one of"):
        row_attention(q, k, v, views=ODD.views, height=ODD.height, backend="cuda")


def test_triton_limits():
    q, k, v = random_qkv(ODD, torch.float64)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        row_attention(q, k, v, views=ODD.views, height=ODD.height, backend="triton")
    big = torch.zeros(ODD.views, 1, ODD.height * ODD.width, 257)
    with pytest.raises(ValueError, match="<= 256"):
        row_attention(big, big, big, views=ODD.views, height=ODD.height, backend="triton")
