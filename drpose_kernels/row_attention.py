"""Row-wise multi-view attention: Triton forward and backward kernels, read in place.

Layout: ``q``, ``k``, ``v`` are ``(B*V, heads, H*W, D)`` with any strides (rows (sample, view),
view fastest; tokens (y, x), x fastest). For a sample ``b``, an image row ``y`` and a head ``n``
the attention sequence is the ``V*W`` tokens ``t = view*W + x`` at
``[b*V + view, n, y*W + x, :]``; the kernels walk that sequence through the strides, so no
rearranged copy of q, k, v or the output is ever made. Each program owns one tile of one
sequence: grid ``(tiles, B*heads, H)``. The sequence's first element is one 64-bit offset per
program; the tokens of a tile are ``view * stride_row + x * stride_token`` from there, computed
once per tile in int32 (int64 only when one sample's tensor spans 2^31 elements).

Maths, for one sequence (S, P are ``(V*W, V*W)``, scale ``s``)::

    S = s Q K^T,   P = softmax_rows(S),   O = P V,   lse_i = log sum_j exp(S_ij)
    dV = P^T dO
    dP = dO V^T
    dS = P * (dP - Delta[:, None]),   Delta_i = sum_j P_ij dP_ij = sum_d dO_id O_id
    dQ = s dS K,   dK = s dS^T Q

The forward uses the online softmax (running max and sum, fp32 accumulators, ``exp2`` with the
scale folded into ``s * log2(e)``) and stores the base-2 logsumexp ``lse2 = lse / ln 2`` (fp32)
for the backward, which recomputes ``P = exp2(S log2(e) - lse2)`` block by block (keeping the
statistic in base 2 saves two roundings in the exponent). The backward is FlashAttention-2's
split: the dQ kernel (one query tile, looping over key tiles) first computes and stores Delta
for its queries, then a dK/dV kernel (one key tile, looping over query tiles) reads it; neither
needs atomics.

Tile sizes, warps and pipeline stages are chosen per pass, dtype, padded head dim and GPU arch
(:func:`choose_tiles`) so that every launch fits the arch's shared memory per block and the
16-bit kernels do not spill registers (``make gpu-check`` verifies both for sm_80/86/89/90).
Inputs: float16, bfloat16 or float32; head dim D up to 256 (a constexpr: one compiled kernel
per head dim), padded to a power of two with masks. Imports only torch and triton.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from drpose_kernels._arch import target_arch

LOG2E = math.log2(math.e)
MIN_BLOCK = 16  # tl.dot needs every dimension >= 16
MAX_GRID_YZ = 65535  # CUDA's limit on grid dimensions 1 and 2
INT32_MAX = 2**31 - 1


@triton.jit
def _sequence_start(b, y, head, VIEWS, WIDTH, s_row, s_head, s_tok):
    """64-bit element offset of token 0 (view 0, x 0) of sample b, image row y, head."""
    return ((b * VIEWS).to(tl.int64) * s_row + head.to(tl.int64) * s_head
            + (y * WIDTH).to(tl.int64) * s_tok)


@triton.jit
def _split_tokens(t, WIDTH, WIDE: tl.constexpr):
    """(view, x) of sequence tokens t = view*W + x, int64 when WIDE."""
    view = t // WIDTH
    x = t - view * WIDTH
    if WIDE:
        view = view.to(tl.int64)
        x = x.to(tl.int64)
    return view, x


@triton.jit
def _row_attention_fwd_kernel(
    Q, K, V, O, LSE2,
    sq_r, sq_h, sq_t, sq_d,
    sk_r, sk_h, sk_t, sk_d,
    sv_r, sv_h, sv_t, sv_d,
    so_r, so_h, so_t, so_d,
    sl_r, sl_h, sl_t,
    qk_scale_log2,
    HEADS, VIEWS, WIDTH,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr, WIDE: tl.constexpr,
):
    """O = softmax(s Q K^T) V and lse2 = log2 rowsum exp(s Q K^T) for one block of BLOCK_M queries
    of one (sample b, image row y, head n) sequence of V*W tokens, by the online softmax:
    per key block, m' = max(m, rowmax S_blk), l = l e^(m-m') + rowsum e^(S_blk-m'),
    acc = acc e^(m-m') + e^(S_blk-m') V_blk; finally O = acc / l, lse = m + log l
    (computed in base 2: scores pre-multiplied by log2(e), exp2, log2)."""
    seq = VIEWS * WIDTH
    bh = tl.program_id(1)
    y = tl.program_id(2)
    b = bh // HEADS
    head = bh - b * HEADS
    Q += _sequence_start(b, y, head, VIEWS, WIDTH, sq_r, sq_h, sq_t)
    K += _sequence_start(b, y, head, VIEWS, WIDTH, sk_r, sk_h, sk_t)
    V += _sequence_start(b, y, head, VIEWS, WIDTH, sv_r, sv_h, sv_t)
    O += _sequence_start(b, y, head, VIEWS, WIDTH, so_r, so_h, so_t)
    LSE2 += _sequence_start(b, y, head, VIEWS, WIDTH, sl_r, sl_h, sl_t)

    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < seq
    mask_d = offs_d < HEAD_DIM
    view_m, x_m = _split_tokens(offs_m, WIDTH, WIDE)
    q_mask = mask_m[:, None] & mask_d[None, :]
    q = tl.load(Q + (view_m * sq_r + x_m * sq_t)[:, None] + offs_d[None, :] * sq_d,
                mask=q_mask, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, seq, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < seq
        kv_mask = mask_n[:, None] & mask_d[None, :]
        view_n, x_n = _split_tokens(offs_n, WIDTH, WIDE)
        k = tl.load(K + (view_n * sk_r + x_n * sk_t)[:, None] + offs_d[None, :] * sk_d,
                    mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale_log2
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + (view_n * sv_r + x_n * sv_t)[:, None] + offs_d[None, :] * sv_d,
                    mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    acc = acc / l_i[:, None]
    tl.store(O + (view_m * so_r + x_m * so_t)[:, None] + offs_d[None, :] * so_d,
             acc.to(O.dtype.element_ty), mask=q_mask)
    lse2 = m_i + tl.log2(l_i)  # base 2: lse / ln(2)
    tl.store(LSE2 + view_m * sl_r + x_m * sl_t, lse2, mask=mask_m)


@triton.jit
def _row_attention_bwd_dq_kernel(
    Q, K, V, O, DO, LSE2, DELTA, DQ,
    sq_r, sq_h, sq_t, sq_d,
    sk_r, sk_h, sk_t, sk_d,
    sv_r, sv_h, sv_t, sv_d,
    so_r, so_h, so_t, so_d,
    sdo_r, sdo_h, sdo_t, sdo_d,
    sl_r, sl_h, sl_t,
    sdq_r, sdq_h, sdq_t, sdq_d,
    scale, qk_scale_log2,
    HEADS, VIEWS, WIDTH,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr, WIDE: tl.constexpr,
):
    """For one block of BLOCK_M queries of one (sample, image row, head) sequence: Delta =
    rowsum(dO * O) (stored, fp32, for the dK/dV kernel), then dQ = s (P * (dO V^T - Delta)) K,
    looping over all key blocks; P = exp2(s log2(e) Q K^T - lse2)."""
    seq = VIEWS * WIDTH
    bh = tl.program_id(1)
    y = tl.program_id(2)
    b = bh // HEADS
    head = bh - b * HEADS
    Q += _sequence_start(b, y, head, VIEWS, WIDTH, sq_r, sq_h, sq_t)
    K += _sequence_start(b, y, head, VIEWS, WIDTH, sk_r, sk_h, sk_t)
    V += _sequence_start(b, y, head, VIEWS, WIDTH, sv_r, sv_h, sv_t)
    O += _sequence_start(b, y, head, VIEWS, WIDTH, so_r, so_h, so_t)
    DO += _sequence_start(b, y, head, VIEWS, WIDTH, sdo_r, sdo_h, sdo_t)
    stat_start = _sequence_start(b, y, head, VIEWS, WIDTH, sl_r, sl_h, sl_t)
    LSE2 += stat_start
    DELTA += stat_start
    DQ += _sequence_start(b, y, head, VIEWS, WIDTH, sdq_r, sdq_h, sdq_t)

    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < seq
    mask_d = offs_d < HEAD_DIM
    q_mask = mask_m[:, None] & mask_d[None, :]
    view_m, x_m = _split_tokens(offs_m, WIDTH, WIDE)
    o = tl.load(O + (view_m * so_r + x_m * so_t)[:, None] + offs_d[None, :] * so_d,
                mask=q_mask, other=0.0)
    do = tl.load(DO + (view_m * sdo_r + x_m * sdo_t)[:, None] + offs_d[None, :] * sdo_d,
                 mask=q_mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    stat_offs = view_m * sl_r + x_m * sl_t
    tl.store(DELTA + stat_offs, delta, mask=mask_m)
    lse2 = tl.load(LSE2 + stat_offs, mask=mask_m, other=0.0)
    q = tl.load(Q + (view_m * sq_r + x_m * sq_t)[:, None] + offs_d[None, :] * sq_d,
                mask=q_mask, other=0.0)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, seq, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < seq
        kv_mask = mask_n[:, None] & mask_d[None, :]
        view_n, x_n = _split_tokens(offs_n, WIDTH, WIDE)
        k = tl.load(K + (view_n * sk_r + x_n * sk_t)[:, None] + offs_d[None, :] * sk_d,
                    mask=kv_mask, other=0.0)
        v = tl.load(V + (view_n * sv_r + x_n * sv_t)[:, None] + offs_d[None, :] * sv_d,
                    mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        p = tl.exp2(s * qk_scale_log2 - lse2[:, None])
        p = tl.where(mask_n[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)

    dq = dq * scale
    tl.store(DQ + (view_m * sdq_r + x_m * sdq_t)[:, None] + offs_d[None, :] * sdq_d,
             dq.to(DQ.dtype.element_ty), mask=q_mask)


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
    HEADS, VIEWS, WIDTH,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr, WIDE: tl.constexpr,
):
    """dV = P^T dO and dK = s (P * (dO V^T - Delta))^T Q for one block of BLOCK_N keys of one
    (sample, image row, head) sequence, looping over all its query blocks; P^T is recomputed as
    exp2(s log2(e) K Q^T - lse2^T) from the forward's base-2 logsumexp."""
    seq = VIEWS * WIDTH
    bh = tl.program_id(1)
    y = tl.program_id(2)
    b = bh // HEADS
    head = bh - b * HEADS
    Q += _sequence_start(b, y, head, VIEWS, WIDTH, sq_r, sq_h, sq_t)
    K += _sequence_start(b, y, head, VIEWS, WIDTH, sk_r, sk_h, sk_t)
    V += _sequence_start(b, y, head, VIEWS, WIDTH, sv_r, sv_h, sv_t)
    DO += _sequence_start(b, y, head, VIEWS, WIDTH, sdo_r, sdo_h, sdo_t)
    stat_start = _sequence_start(b, y, head, VIEWS, WIDTH, sl_r, sl_h, sl_t)
    LSE2 += stat_start
    DELTA += stat_start
    DK += _sequence_start(b, y, head, VIEWS, WIDTH, sdk_r, sdk_h, sdk_t)
    DV += _sequence_start(b, y, head, VIEWS, WIDTH, sdv_r, sdv_h, sdv_t)

    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < seq
    mask_d = offs_d < HEAD_DIM
    kv_mask = mask_n[:, None] & mask_d[None, :]
    view_n, x_n = _split_tokens(offs_n, WIDTH, WIDE)
    k = tl.load(K + (view_n * sk_r + x_n * sk_t)[:, None] + offs_d[None, :] * sk_d,
                mask=kv_mask, other=0.0)
    v = tl.load(V + (view_n * sv_r + x_n * sv_t)[:, None] + offs_d[None, :] * sv_d,
                mask=kv_mask, other=0.0)

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start_m in range(0, seq, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        mask_m = offs_m < seq
        q_mask = mask_m[:, None] & mask_d[None, :]
        view_m, x_m = _split_tokens(offs_m, WIDTH, WIDE)
        q = tl.load(Q + (view_m * sq_r + x_m * sq_t)[:, None] + offs_d[None, :] * sq_d,
                    mask=q_mask, other=0.0)
        do = tl.load(DO + (view_m * sdo_r + x_m * sdo_t)[:, None] + offs_d[None, :] * sdo_d,
                     mask=q_mask, other=0.0)
        stat_offs = view_m * sl_r + x_m * sl_t
        lse2 = tl.load(LSE2 + stat_offs, mask=mask_m, other=0.0)
        delta = tl.load(DELTA + stat_offs, mask=mask_m, other=0.0)

        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
        p_t = tl.exp2(s_t * qk_scale_log2 - lse2[None, :])
        p_t = tl.where(mask_m[None, :], p_t, 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)

    dk = dk * scale
    tl.store(DK + (view_n * sdk_r + x_n * sdk_t)[:, None] + offs_d[None, :] * sdk_d,
             dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + (view_n * sdv_r + x_n * sdv_t)[:, None] + offs_d[None, :] * sdv_d,
             dv.to(DV.dtype.element_ty), mask=kv_mask)


# ---- configurations ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Tile:
    """One kernel's launch configuration: BLOCK_M queries x BLOCK_N keys per step."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class Tiles:
    """The configurations of the three kernels for one (arch, dtype, padded head dim)."""

    forward: Tile
    dq: Tile
    dkdv: Tile


SMALL_SHARED_ARCHS = (86, 89)  # 99 KB of shared memory a block (sm_80: 163 KB, sm_90: 227 KB)


def choose_tiles(arch: int, dtype: torch.dtype, block_d: int) -> Tiles:
    """The tile configuration for GPU ``arch`` (10 * major + minor), input ``dtype`` and padded
    head dim ``block_d`` (a power of two, 16..256).

    16-bit inputs run 64-query x 64-key steps on tensor cores. The dK/dV kernel keeps four
    (BLOCK_N, BLOCK_D) tiles live (K, V and the fp32 dK, dV accumulators), so it walks queries
    32 at a time, with 8 warps (4 warps reach the 255-register cap and spill at head dim 40 on
    sm_80); the dQ kernel, with dQ, Q and dO live, walks keys 32 at a time. The forward and dQ
    kernels use 8 warps from head dim 128 on; 256 halves the tiles. Archs with 99 KB of shared
    memory a block (sm_86, sm_89) pipeline two stages instead of three. fp32 inputs
    (full-precision products, no tensor cores) use 32 x 32 tiles and one stage everywhere.
    """
    small_shared = arch in SMALL_SHARED_ARCHS
    if dtype == torch.float32:
        stages = 1
        warps = 4 if block_d <= 64 else 8
        base = 32 if block_d <= 128 else 16
        tile = Tile(base, base, warps, stages)
        return Tiles(forward=tile, dq=tile, dkdv=tile)
    stages = 2 if small_shared else 3
    warps = 4 if block_d <= 64 else 8
    big, small = (64, 32) if block_d <= 128 else (32, 16)
    return Tiles(forward=Tile(big, big, warps, stages),
                 dq=Tile(big, small, warps, stages),
                 dkdv=Tile(small, big, 8, stages))


def all_tiles(archs: tuple[int, ...] = (80, 86, 89, 90)) -> set[Tile]:
    """Every kernel configuration :func:`choose_tiles` can return (for the tests)."""
    tiles = set()
    for arch in archs:
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            for block_d in (16, 32, 64, 128, 256):
                chosen = choose_tiles(arch, dtype, block_d)
                tiles |= {chosen.forward, chosen.dq, chosen.dkdv}
    return tiles


def _fit(tile: Tile, seq: int) -> Tile:
    """Shrink a tile's blocks to a short sequence (powers of two >= 16)."""
    cap = max(MIN_BLOCK, triton.next_power_of_2(seq))
    return Tile(min(tile.block_m, cap), min(tile.block_n, cap), tile.num_warps, tile.num_stages)


def _dot_precision(dtype: torch.dtype) -> str | None:
    """Full fp32 products for fp32 inputs (as torch's default matmul); the target's default for
    16-bit inputs (it only matters for fp32)."""
    return "ieee" if dtype == torch.float32 else None


def _on_device(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device: make it ``t``'s."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


@dataclass(frozen=True)
class _Launch:
    """What every kernel of one call shares: sizes, the grid's last two axes, constexprs."""

    batch: int
    heads: int
    width: int
    views: int
    height: int
    head_dim: int
    block_d: int
    wide: bool
    tiles: Tiles

    @property
    def seq(self) -> int:
        return self.views * self.width

    def grid(self, block: int) -> tuple[int, int, int]:
        return (triton.cdiv(self.seq, block), self.batch * self.heads, self.height)

    def dims(self) -> tuple[int, int, int]:
        return (self.heads, self.views, self.width)

    def constexprs(self, tile: Tile, dtype: torch.dtype) -> dict:
        return dict(HEAD_DIM=self.head_dim, BLOCK_M=tile.block_m, BLOCK_N=tile.block_n,
                    BLOCK_D=self.block_d, DOT_PRECISION=_dot_precision(dtype), WIDE=self.wide,
                    num_warps=tile.num_warps, num_stages=tile.num_stages)


def _plan(q: torch.Tensor, tensors: list[torch.Tensor], views: int, height: int,
          tiles: Tiles | None) -> _Launch:
    rows, heads, tokens, head_dim = q.shape
    batch, width = rows // views, tokens // height
    if batch * heads > MAX_GRID_YZ or height > MAX_GRID_YZ:
        raise ValueError(f"row_attention(backend='triton'): B*heads = {batch * heads} and H = "
                         f"{height} must be <= {MAX_GRID_YZ} (CUDA grid); split the batch")
    block_d = max(MIN_BLOCK, triton.next_power_of_2(head_dim))
    if tiles is None:
        tiles = choose_tiles(target_arch(q.device), q.dtype, block_d)
    seq = views * width
    tiles = Tiles(*(_fit(tile, seq) for tile in (tiles.forward, tiles.dq, tiles.dkdv)))
    # int32 token offsets unless one sample's in-sequence offsets can pass 2^31 (the head and
    # the image row are in each program's 64-bit start)
    extents = (views - 1, 0, tokens - 1, head_dim - 1)
    wide = any(sum(abs(s) * n for s, n in zip(t.stride(), extents, strict=True)) > INT32_MAX
               for t in tensors)
    return _Launch(batch, heads, width, views, height, head_dim, block_d, wide, tiles)


def row_attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    views: int,
    height: int,
    scale: float,
    tiles: Tiles | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel.

    Args:
        q, k, v: ``(B*V, heads, H*W, D)``, float16/bfloat16/float32, any strides, one device.
        views, height: V and H. scale: softmax scale (a Python float, passed as fp32).
        tiles: the configuration to use instead of :func:`choose_tiles`'s (for tests).

    Returns:
        ``out`` (contiguous, q's shape and dtype) and ``lse2`` ``(B*V, heads, H*W)`` float32,
        the base-2 logsumexp of each query's scaled scores (natural logsumexp / ln 2).
    """
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse2 = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    plan = _plan(q, [q, k, v, out], views, height, tiles)
    tile = plan.tiles.forward
    with _on_device(q):
        _row_attention_fwd_kernel[plan.grid(tile.block_m)](
            q, k, v, out, lse2,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), *lse2.stride(),
            float(scale) * LOG2E, *plan.dims(), **plan.constexprs(tile, q.dtype),
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
    tiles: Tiles | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward kernels (Delta and dQ per query block, then dK/dV per key block).

    Args:
        grad_out, q, k, v, out: ``(B*V, heads, H*W, D)``, one dtype, any strides.
        lse2: ``(B*V, heads, H*W)`` float32, the base-2 logsumexp from
            :func:`row_attention_forward`.
        views, height, scale, tiles: as in :func:`row_attention_forward`.

    Returns:
        ``(dq, dk, dv)``, contiguous, shaped and typed like ``q``.
    """
    delta = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    dq, dk, dv = (torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))
    plan = _plan(q, [grad_out, q, k, v, out, dq], views, height, tiles)
    scales = (float(scale), float(scale) * LOG2E)
    with _on_device(q):
        tile = plan.tiles.dq
        _row_attention_bwd_dq_kernel[plan.grid(tile.block_m)](
            q, k, v, out, grad_out, lse2, delta, dq,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), *grad_out.stride(),
            *lse2.stride(), *dq.stride(),
            *scales, *plan.dims(), **plan.constexprs(tile, q.dtype),
        )
        tile = plan.tiles.dkdv
        _row_attention_bwd_dkdv_kernel[plan.grid(tile.block_n)](
            q, k, v, grad_out, lse2, delta, dk, dv,
            *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *lse2.stride(),
            *dk.stride(), *dv.stride(),
            *scales, *plan.dims(), **plan.constexprs(tile, q.dtype),
        )
    return dq, dk, dv
