"""Row-wise multi-view attention (Era3D / PSHuman ``attn_mv``), fused.

Layout: ``q``, ``k``, ``v`` and the output are ``(B*V, heads, H*W, D)``, the layout diffusers'
``Attention`` has after splitting heads, with rows ordered (sample, view), view fastest, and
tokens ordered (y, x), x fastest. For every sample ``b`` and image row ``y`` the ``V*W`` tokens
``{(view, y, x)}`` attend to each other and to nothing else::

    rearrange (b v) n (h w) d -> (b h) n (v w) d
    out = softmax(q k^T * scale) v          (scale defaults to 1/sqrt(D))
    rearrange back

Backends:

* ``"torch"``: :func:`row_attention_reference`, the specification (differentiable by autograd).
* ``"cpu"``: :func:`row_attention_sdpa`, the rearrange + ``F.scaled_dot_product_attention``
  (differentiable by autograd, traced by ``torch.compile`` as ordinary torch ops).
* ``"triton"``: :mod:`drpose_kernels.row_attention`, which reads the strided layout in place
  (no rearranged copies of q, k, v, the output or the gradients), for CUDA tensors, or on CPU
  under ``TRITON_INTERPRET=1``. It runs as the custom op ``drpose::row_attention`` (output and
  base-2 logsumexp) whose gradient is the custom op ``drpose::row_attention_backward``, both with
  fake implementations, so ``torch.compile`` traces them as single nodes.
* ``"auto"``: CUDA tensors -> ``"triton"``, CPU tensors -> ``"cpu"``.

The CPU path is deliberately not a custom op: autograd cannot run inside one, so its backward
would have to rearrange q, k, v and the output a second time; measured at PSHuman's 24x24 level
that made forward + backward 15 % slower and its peak memory 18 % higher than letting autograd
keep SDPA's rearranged inputs.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from drpose.ops import _dispatch

OP = "row_attention"
Backend = Literal["auto", "torch", "cpu", "triton"]
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TRITON_MAX_HEAD_DIM = 256


def rows_from_views(x: Tensor, views: int, height: int) -> Tensor:
    """Rearrange ``(B*V, n, H*W, ...) -> (B*H, n, V*W, ...)`` (a copy; tokens view-major)."""
    bv, n, hw = x.shape[:3]
    tail = x.shape[3:]
    b, w = bv // views, hw // height
    x = x.reshape(b, views, n, height, w, *tail).transpose(1, 3)  # (B, H, n, V, W, ...)
    return x.reshape(b * height, n, views * w, *tail)


def views_from_rows(x: Tensor, views: int, height: int) -> Tensor:
    """Inverse of :func:`rows_from_views`: ``(B*H, n, V*W, ...) -> (B*V, n, H*W, ...)``."""
    bh, n, vw = x.shape[:3]
    tail = x.shape[3:]
    b, w = bh // height, vw // views
    x = x.reshape(b, height, n, views, w, *tail).transpose(1, 3)  # (B, V, n, H, W, ...)
    return x.reshape(b * views, n, height * w, *tail)


def row_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, *, views: int, height: int, scale: float | None = None
) -> Tensor:
    """Row-wise multi-view attention in plain torch: the specification.

    Args:
        q, k, v: ``(B*V, heads, H*W, D)`` floating tensors of one dtype and device.
        views: V, the number of views per sample (rows of the batch are (sample, view)).
        height: H, the number of image rows; W = (H*W) / height.
        scale: softmax scale, default ``1/sqrt(D)``.

    Returns:
        ``(B*V, heads, H*W, D)`` in the input dtype: for every sample and image row, softmax
        attention of the row's V*W tokens among themselves. Computed in float32 (float64 for
        float64 inputs): ``softmax(q k^T * scale) v``.
    """
    check_inputs(q, k, v, views=views, height=height)
    scale = default_scale(q, scale)
    compute_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    qr, kr, vr = (rows_from_views(t.to(compute_dtype), views, height) for t in (q, k, v))
    scores = torch.matmul(qr, kr.transpose(-1, -2)) * scale  # (B*H, heads, V*W, V*W)
    out = torch.matmul(torch.softmax(scores, dim=-1), vr)
    return views_from_rows(out, views, height).to(q.dtype)


def default_scale(q: Tensor, scale: float | None) -> float:
    """``scale`` as a Python float, ``1/sqrt(D)`` when ``None``."""
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


def check_inputs(q: Tensor, k: Tensor, v: Tensor, *, views: int, height: int) -> None:
    """Raise ``TypeError``/``ValueError`` naming the argument when the inputs break the contract."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        _dispatch.check_tensor(OP, name, t, dims=4, floating=True)
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{OP}(): {name} must have q's shape (B*V, heads, H*W, D) = "
                             f"{tuple(q.shape)}, got {tuple(t.shape)}")
        if t.dtype != q.dtype:
            raise TypeError(f"{OP}(): {name} must have q's dtype {q.dtype}, got {t.dtype}")
    _dispatch.check_same_device(OP, q=q, k=k, v=v)
    for name, value in (("views", views), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{OP}(): {name} must be a positive int, got {value!r}")
    rows, _, tokens, head_dim = q.shape
    if head_dim < 1:
        raise ValueError(f"{OP}(): head dim D = q.shape[3] must be >= 1, got shape "
                         f"{tuple(q.shape)}")
    if rows % views:
        raise ValueError(f"{OP}(): q.shape[0] = B*V = {rows} must be divisible by views = {views}")
    if tokens % height:
        raise ValueError(f"{OP}(): q.shape[2] = H*W = {tokens} must be divisible by height = "
                         f"{height}")


def _check_triton_inputs(q: Tensor) -> None:
    if q.dtype not in TRITON_DTYPES:
        raise TypeError(f"{OP}(backend='triton'): q, k, v must be float16, bfloat16 or float32, "
                        f"got {q.dtype}; use backend='cpu' or 'torch' for float64")
    if q.shape[-1] > TRITON_MAX_HEAD_DIM:
        raise ValueError(f"{OP}(backend='triton'): head dim D = q.shape[3] must be <= "
                         f"{TRITON_MAX_HEAD_DIM}, got {q.shape[-1]}")


def row_attention_sdpa(
    q: Tensor, k: Tensor, v: Tensor, *, views: int, height: int, scale: float
) -> Tensor:
    """The CPU path: rearrange to ``(B*H, heads, V*W, D)`` (copies of q, k and v), SDPA, and
    rearrange the output back (a fourth copy). Shapes and maths as :func:`row_attention`."""
    rows = [rows_from_views(t, views, height) for t in (q, k, v)]
    out = torch.nn.functional.scaled_dot_product_attention(*rows, scale=scale)
    return views_from_rows(out, views, height)


@torch.library.custom_op("drpose::row_attention", mutates_args=())
def _row_attention_op(
    q: Tensor, k: Tensor, v: Tensor, views: int, height: int, scale: float
) -> tuple[Tensor, Tensor]:
    """Triton forward: ``out (B*V, heads, H*W, D)`` (q's dtype) and ``lse2 (B*V, heads, H*W)``
    float32, each query's base-2 logsumexp of the scaled scores (natural logsumexp / ln 2)."""
    if q.numel() == 0:
        return _empty_outputs(q)
    from drpose_kernels.row_attention import row_attention_forward

    return row_attention_forward(q, k, v, views=views, height=height, scale=scale)


def _empty_outputs(q: Tensor) -> tuple[Tensor, Tensor]:
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    return out, q.new_empty(q.shape[:3], dtype=torch.float32)


@_row_attention_op.register_fake
def _(q, k, v, views, height, scale):
    return _empty_outputs(q)


@torch.library.custom_op("drpose::row_attention_backward", mutates_args=())
def _row_attention_backward_op(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse2: Tensor,
    views: int,
    height: int,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Triton backward: ``(dq, dk, dv)`` of ``drpose::row_attention``, each shaped like ``q``."""
    if q.numel() == 0:
        return tuple(torch.zeros_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))
    from drpose_kernels.row_attention import row_attention_backward

    return row_attention_backward(
        grad_out, q, k, v, out, lse2, views=views, height=height, scale=scale
    )


@_row_attention_backward_op.register_fake
def _(grad_out, q, k, v, out, lse2, views, height, scale):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, views, height, scale = inputs
    out, lse2 = output
    ctx.save_for_backward(q, k, v, out, lse2)
    ctx.config = (views, height, scale)


def _backward(ctx, grad_out: Tensor, _grad_lse2: Tensor | None):
    q, k, v, out, lse2 = ctx.saved_tensors
    dq, dk, dv = _row_attention_backward_op(grad_out, q, k, v, out, lse2, *ctx.config)
    return dq, dk, dv, None, None, None


_row_attention_op.register_autograd(_backward, setup_context=_setup_context)


def resolve_backend(q: Tensor, backend: str) -> str:
    """``"auto"`` -> ``"triton"`` for CUDA tensors, ``"cpu"`` otherwise; validate the choice.

    The ``"cpu"`` path needs only torch (not ``drpose._C``), so it is always available on CPU.
    """
    if backend == "auto":
        backend = "triton" if q.is_cuda else "cpu"
    if backend == "cpu" and q.device.type != "cpu":
        raise ValueError(f"{OP}(): backend='cpu' needs CPU tensors, got {q.device}")
    if backend in ("cpu", "torch"):
        return backend
    backend = _dispatch.resolve_backend(OP, backend, q.device)
    if backend == "triton":
        _check_triton_inputs(q)
    return backend


def row_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    views: int,
    height: int,
    scale: float | None = None,
    backend: Backend = "auto",
) -> Tensor:
    """Row-wise multi-view attention (see the module docstring for the maths and backends).

    Args:
        q, k, v: ``(B*V, heads, H*W, D)``, one floating dtype and device; rows ordered
            (sample, view) with view fastest, tokens ordered (y, x) with x fastest.
        views: V. height: H (image rows); W = (H*W) / H.
        scale: softmax scale, default ``1/sqrt(D)``.
        backend: ``"auto"`` | ``"torch"`` | ``"cpu"`` | ``"triton"``.

    Returns:
        ``(B*V, heads, H*W, D)`` in the input dtype, differentiable with respect to q, k, v.
    """
    check_inputs(q, k, v, views=views, height=height)
    backend = resolve_backend(q, backend)
    scale = default_scale(q, scale)
    if backend == "torch":
        return row_attention_reference(q, k, v, views=views, height=height, scale=scale)
    if backend == "cpu":
        return row_attention_sdpa(q, k, v, views=views, height=height, scale=scale)
    out, _ = _row_attention_op(q, k, v, views, height, scale)
    return out
