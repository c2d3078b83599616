"""Row-wise multi-view attention: Triton forward and backward kernels, read in place.

Layout: ``q``, ``k``, ``v`` are ``(B*V, heads, H*W, D)`` with any strides (rows (sample, view),
view fastest; tokens (y, x), x fastest). For a sample ``b``, an image row ``y`` and a head ``n``
the attention sequence is the ``V*W`` tokens ``t = view*W + x`` at
``[b*V + view, n, y*W + x, :]``; the kernels walk that sequence through the strides, so no
rearranged copy of q, k, v or the output is ever made.

Maths, for one sequence (S, P are ``(V*W, V*W)``, scale ``s``)::

    S = s Q K^T,   P = softmax_rows(S),   O = P V,   lse_i = log sum_j exp(S_ij)
    dV = P^T dO
    dP = dO V^T
    dS = P * (dP - Delta[:, None]),   Delta_i = sum_j P_ij dP_ij = sum_d dO_id O_id
    dQ = s dS K,   dK = s dS^T Q

The forward uses the online softmax (running max and sum, fp32 accumulators, ``exp2`` with the
scale folded into ``s * log2(e)``) and stores the base-2 logsumexp ``lse2 = lse / ln 2`` (fp32)
for the backward, which recomputes ``P = exp2(S log2(e) - lse2)`` block by block (keeping the
statistic in base 2 saves two roundings in the exponent). Inputs: float16, bfloat16 or float32;
head dim D up to 256, padded to a power of two with masks. Imports only torch and triton.
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl

LOG2E = math.log2(math.e)
MIN_BLOCK = 16  # tl.dot needs every dimension >= 16


@triton.jit
def _token_offsets(t, b, y, VIEWS, WIDTH, stride_row, stride_tok):
    """Element offsets of sequence tokens ``t = view*W + x`` of sample ``b``, image row ``y``."""
    return (b * VIEWS + t // WIDTH) * stride_row + (y * WIDTH + t % WIDTH) * stride_tok


@triton.jit
def _row_attention_fwd_kernel(
    Q, K, V, O, LSE2,
    sq_r, sq_h, sq_t, sq_d,
    sk_r, sk_h, sk_t, sk_d,
    sv_r, sv_h, sv_t, sv_d,
    so_r, so_h, so_t, so_d,
    sl_r, sl_h, sl_t,
    qk_scale_log2,
    HEADS, HEIGHT, VIEWS, WIDTH, HEAD_DIM,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """O = softmax(s Q K^T) V and lse2 = log2 rowsum exp(s Q K^T) for one block of BLOCK_M queries
    of one (sample b, image row y, head n) sequence of V*W tokens, by the online softmax:
    per key block, m' = max(m, rowmax S_blk), l = l e^(m-m') + rowsum e^(S_blk-m'),
    acc = acc e^(m-m') + e^(S_blk-m') V_blk; finally O = acc / l, lse = m + log l
    (computed in base 2: scores pre-multiplied by log2(e), exp2, log2)."""
    seq = VIEWS * WIDTH
    num_m = tl.cdiv(seq, BLOCK_M)
    pid = tl.program_id(0).to(tl.int64)
    pid_m = pid % num_m
    group = pid // num_m
    head = group % HEADS
    y = (group // HEADS) % HEIGHT
    b = group // (HEADS * HEIGHT)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < seq
    mask_d = offs_d < HEAD_DIM

    q_ptrs = (Q + head * sq_h + _token_offsets(offs_m, b, y, VIEWS, WIDTH, sq_r, sq_t)[:, None]
              + offs_d[None, :] * sq_d)
    q = tl.load(q_ptrs, mask=mask_m[:, None] & mask_d[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, seq, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N).to(tl.int64)
        mask_n = offs_n < seq
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k_tok = _token_offsets(offs_n, b, y, VIEWS, WIDTH, sk_r, sk_t)
        k = tl.load(K + head * sk_h + k_tok[:, None] + offs_d[None, :] * sk_d,
                    mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale_log2
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v_tok = _token_offsets(offs_n, b, y, VIEWS, WIDTH, sv_r, sv_t)
        v = tl.load(V + head * sv_h + v_tok[:, None] + offs_d[None, :] * sv_d,
                    mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    acc = acc / l_i[:, None]
    o_ptrs = (O + head * so_h + _token_offsets(offs_m, b, y, VIEWS, WIDTH, so_r, so_t)[:, None]
              + offs_d[None, :] * so_d)
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    lse2 = m_i + tl.log2(l_i)  # base 2: lse / ln(2)
    tl.store(LSE2 + head * sl_h + _token_offsets(offs_m, b, y, VIEWS, WIDTH, sl_r, sl_t), lse2,
             mask=mask_m)


@triton.jit
def _row_attention_bwd_delta_kernel(
    O, DO, DELTA,
    so_r, so_h, so_t, so_d,
    sdo_r, sdo_h, sdo_t, sdo_d,
    sl_r, sl_h, sl_t,
    HEADS, TOKENS, HEAD_DIM,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Delta_i = sum_d dO_id O_id (fp32) for one block of tokens of one (row, head); this equals
    sum_j P_ij dP_ij, the term the softmax derivative subtracts."""
    num_m = tl.cdiv(TOKENS, BLOCK_M)
    pid = tl.program_id(0).to(tl.int64)
    pid_m = pid % num_m
    group = pid // num_m
    head = group % HEADS
    row = group // HEADS
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < TOKENS)[:, None] & (offs_d < HEAD_DIM)[None, :]
    o = tl.load(O + row * so_r + head * so_h + offs_m[:, None] * so_t + offs_d[None, :] * so_d,
                mask=mask, other=0.0)
    do = tl.load(DO + row * sdo_r + head * sdo_h + offs_m[:, None] * sdo_t
                 + offs_d[None, :] * sdo_d, mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + row * sl_r + head * sl_h + offs_m * sl_t, delta, mask=offs_m < TOKENS)


@triton.jit
def _row_attention_bwd_dkdv_kernel(
    Q, K, V, DO, LSE2, DELTA, DK, DV,
    sq_r, sq_h, sq_t, sq_d,
    sk_r, sk_h, sk_t, sk_d,
    sv_r, sv_h, sv_t, sv_d,
    sdo_r, sdo_h, sdo_t, sdo_d,
    sl_r, sl_h, sl_t,
    sdk_r, sdk_h, sdk_t, sdk_d,
    sdv_r, sdv_h, sdv_t, sdv_d,
    scale, qk_scale_log2,
    HEADS, HEIGHT, VIEWS, WIDTH, HEAD_DIM,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """dV = P^T dO and dK = s (P * (dO V^T - Delta))^T Q for one block of BLOCK_N keys of one
    (sample, image row, head) sequence, looping over all its query blocks; P^T is recomputed as
    exp2(s log2(e) K Q^T - lse2^T) from the forward's base-2 logsumexp."""
    seq = VIEWS * WIDTH
    num_n = tl.cdiv(seq, BLOCK_N)
    pid = tl.program_id(0).to(tl.int64)
    pid_n = pid % num_n
    group = pid // num_n
    head = group % HEADS
    y = (group // HEADS) % HEIGHT
    b = group // (HEADS * HEIGHT)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < seq
    mask_d = offs_d < HEAD_DIM
    kv_mask = mask_n[:, None] & mask_d[None, :]
    k = tl.load(K + head * sk_h + _token_offsets(offs_n, b, y, VIEWS, WIDTH, sk_r, sk_t)[:, None]
                + offs_d[None, :] * sk_d, mask=kv_mask, other=0.0)
    v = tl.load(V + head * sv_h + _token_offsets(offs_n, b, y, VIEWS, WIDTH, sv_r, sv_t)[:, None]
                + offs_d[None, :] * sv_d, mask=kv_mask, other=0.0)

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start_m in range(0, seq, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M).to(tl.int64)
        mask_m = offs_m < seq
        q_mask = mask_m[:, None] & mask_d[None, :]
        q = tl.load(Q + head * sq_h
                    + _token_offsets(offs_m, b, y, VIEWS, WIDTH, sq_r, sq_t)[:, None]
                    + offs_d[None, :] * sq_d, mask=q_mask, other=0.0)
        do = tl.load(DO + head * sdo_h
                     + _token_offsets(offs_m, b, y, VIEWS, WIDTH, sdo_r, sdo_t)[:, None]
                     + offs_d[None, :] * sdo_d, mask=q_mask, other=0.0)
        l_tok = head * sl_h + _token_offsets(offs_m, b, y, VIEWS, WIDTH, sl_r, sl_t)
        lse2 = tl.load(LSE2 + l_tok, mask=mask_m, other=0.0)
        delta = tl.load(DELTA + l_tok, mask=mask_m, other=0.0)

        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
        p_t = tl.exp2(s_t * qk_scale_log2 - lse2[None, :])
        p_t = tl.where(mask_m[None, :] & mask_n[:, None], p_t, 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)

    dk = dk * scale
    dk_tok = _token_offsets(offs_n, b, y, VIEWS, WIDTH, sdk_r, sdk_t)
    tl.store(DK + head * sdk_h + dk_tok[:, None] + offs_d[None, :] * sdk_d,
             dk.to(DK.dtype.element_ty), mask=kv_mask)
    dv_tok = _token_offsets(offs_n, b, y, VIEWS, WIDTH, sdv_r, sdv_t)
    tl.store(DV + head * sdv_h + dv_tok[:, None] + offs_d[None, :] * sdv_d,
             dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _row_attention_bwd_dq_kernel(
    Q, K, V, DO, LSE2, DELTA, DQ,
    sq_r, sq_h, sq_t, sq_d,
    sk_r, sk_h, sk_t, sk_d,
    sv_r, sv_h, sv_t, sv_d,
    sdo_r, sdo_h, sdo_t, sdo_d,
    sl_r, sl_h, sl_t,
    sdq_r, sdq_h, sdq_t, sdq_d,
    scale, qk_scale_log2,
    HEADS, HEIGHT, VIEWS, WIDTH, HEAD_DIM,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """dQ = s (P * (dO V^T - Delta)) K for one block of BLOCK_M queries of one (sample, image row,
    head) sequence, looping over all its key blocks; P = exp2(s log2(e) Q K^T - lse2)."""
    seq = VIEWS * WIDTH
    num_m = tl.cdiv(seq, BLOCK_M)
    pid = tl.program_id(0).to(tl.int64)
    pid_m = pid % num_m
    group = pid // num_m
    head = group % HEADS
    y = (group // HEADS) % HEIGHT
    b = group // (HEADS * HEIGHT)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < seq
    mask_d = offs_d < HEAD_DIM
    q_mask = mask_m[:, None] & mask_d[None, :]
    q = tl.load(Q + head * sq_h + _token_offsets(offs_m, b, y, VIEWS, WIDTH, sq_r, sq_t)[:, None]
                + offs_d[None, :] * sq_d, mask=q_mask, other=0.0)
    do = tl.load(DO + head * sdo_h
                 + _token_offsets(offs_m, b, y, VIEWS, WIDTH, sdo_r, sdo_t)[:, None]
                 + offs_d[None, :] * sdo_d, mask=q_mask, other=0.0)
    l_tok = head * sl_h + _token_offsets(offs_m, b, y, VIEWS, WIDTH, sl_r, sl_t)
    lse2 = tl.load(LSE2 + l_tok, mask=mask_m, other=0.0)
    delta = tl.load(DELTA + l_tok, mask=mask_m, other=0.0)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, seq, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N).to(tl.int64)
        mask_n = offs_n < seq
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(K + head * sk_h
                    + _token_offsets(offs_n, b, y, VIEWS, WIDTH, sk_r, sk_t)[:, None]
                    + offs_d[None, :] * sk_d, mask=kv_mask, other=0.0)
        v = tl.load(V + head * sv_h
                    + _token_offsets(offs_n, b, y, VIEWS, WIDTH, sv_r, sv_t)[:, None]
                    + offs_d[None, :] * sv_d, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        p = tl.exp2(s * qk_scale_log2 - lse2[:, None])
        p = tl.where(mask_m[:, None] & mask_n[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)

    dq = dq * scale
    dq_tok = _token_offsets(offs_m, b, y, VIEWS, WIDTH, sdq_r, sdq_t)
    tl.store(DQ + head * sdq_h + dq_tok[:, None] + offs_d[None, :] * sdq_d,
             dq.to(DQ.dtype.element_ty), mask=q_mask)


def _blocks(seq: int, head_dim: int, block_m: int | None, block_n: int | None):
    """Block sizes: BLOCK_D = next power of two >= D (min 16); BLOCK_M/N default to 64 (32 keys
    for D > 128), shrunk to the sequence for short sequences."""
    block_d = max(MIN_BLOCK, triton.next_power_of_2(head_dim))
    cap = max(MIN_BLOCK, triton.next_power_of_2(seq))
    block_m = block_m or min(64, cap)
    block_n = block_n or min(64 if head_dim <= 128 else 32, cap)
    num_warps = 4 if block_d <= 64 else 8
    return block_m, block_n, block_d, num_warps


def _dot_precision(dtype: torch.dtype) -> str | None:
    """Full fp32 products for fp32 inputs (as torch's default matmul); the target's default for
    16-bit inputs (it only matters for fp32)."""
    return "ieee" if dtype == torch.float32 else None


def _on_device(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device: make it ``t``'s."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _shape(q: torch.Tensor, views: int, height: int) -> tuple[int, int, int, int]:
    rows, heads, tokens, head_dim = q.shape
    return rows // views, heads, tokens // height, head_dim


def row_attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    views: int,
    height: int,
    scale: float,
    block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel.

    Args:
        q, k, v: ``(B*V, heads, H*W, D)``, float16/bfloat16/float32, any strides, one device.
        views, height: V and H. scale: softmax scale (a Python float, passed as fp32).
        block_m, block_n: optional block sizes (powers of two >= 16), for tests.

    Returns:
        ``out`` (contiguous, q's shape and dtype) and ``lse2`` ``(B*V, heads, H*W)`` float32,
        the base-2 logsumexp of each query's scaled scores (natural logsumexp / ln 2).
    """
    batch, heads, width, head_dim = _shape(q, views, height)
    seq = views * width
    block_m, block_n, block_d, num_warps = _blocks(seq, head_dim, block_m, block_n)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse2 = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    grid = (batch * height * heads * triton.cdiv(seq, block_m),)
    with _on_device(q):
        _row_attention_fwd_kernel[grid](
            q, k, v, out, lse2,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), *lse2.stride(),
            float(scale) * LOG2E,
            heads, height, views, width, head_dim,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
            DOT_PRECISION=_dot_precision(q.dtype), num_warps=num_warps,
        )
    return out, lse2


def row_attention_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse2: torch.Tensor,
    *,
    views: int,
    height: int,
    scale: float,
    block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward kernels (Delta, then dK/dV per key block, then dQ per query block).

    Args:
        grad_out, q, k, v, out: ``(B*V, heads, H*W, D)``, one dtype, any strides.
        lse2: ``(B*V, heads, H*W)`` float32, the base-2 logsumexp from
            :func:`row_attention_forward`.
        views, height, scale, block_m, block_n: as in :func:`row_attention_forward`.

    Returns:
        ``(dq, dk, dv)``, contiguous, shaped and typed like ``q``.
    """
    batch, heads, width, head_dim = _shape(q, views, height)
    seq = views * width
    block_m, block_n, block_d, num_warps = _blocks(seq, head_dim, block_m, block_n)
    delta = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    dq, dk, dv = (torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))
    tokens = q.shape[2]
    scales = (float(scale), float(scale) * LOG2E)
    dims = (heads, height, views, width, head_dim)
    blocks = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
                  DOT_PRECISION=_dot_precision(q.dtype), num_warps=num_warps)
    with _on_device(q):
        _row_attention_bwd_delta_kernel[(q.shape[0] * heads * triton.cdiv(tokens, block_m),)](
            out, grad_out, delta,
            *out.stride(), *grad_out.stride(), *delta.stride(),
            heads, tokens, head_dim,
            BLOCK_M=block_m, BLOCK_D=block_d, num_warps=num_warps,
        )
        _row_attention_bwd_dkdv_kernel[(batch * height * heads * triton.cdiv(seq, block_n),)](
            q, k, v, grad_out, lse2, delta, dk, dv,
            *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *lse2.stride(),
            *dk.stride(), *dv.stride(),
            *scales, *dims, **blocks,
        )
        _row_attention_bwd_dq_kernel[(batch * height * heads * triton.cdiv(seq, block_m),)](
            q, k, v, grad_out, lse2, delta, dq,
            *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *lse2.stride(),
            *dq.stride(),
            *scales, *dims, **blocks,
        )
    return dq, dk, dv
