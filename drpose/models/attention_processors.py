"""PSHuman's three attentions of one transformer block, built from diffusers' parts.

Batch layout (``../shared/reference/pshuman_attention.md`` section 1): the rows of every
``(N, H*W, C)`` tensor inside the UNet are ``[normal half | colour half]``; inside each half,
consecutive groups of ``V = num_body_views (+1 face view)`` rows are the views of one object,
view index fastest (classifier-free guidance puts its uncond/cond groups inside each half).
Tokens are ordered (y, x), x fastest, on a square latent (H = W).

* ``attn1`` — joint self-attention: row r of the normal half and row r of the colour half are
  concatenated along the token axis (2*H*W tokens) before attention, so each image attends to its
  own tokens and to its other-domain twin's, never to other views. The join is done by the block,
  so it holds whichever processor ``attn1`` has (SDPA, xformers, a LoRA processor...). Optional
  face fusion (PSHuman does it inside ``attn1``): the top-centre ninth of the front view's output
  is averaged with the face view's output, bilinearly downsampled.
* ``attn_mv`` — Era3D row-wise attention across the body views (the face view skips it): for
  every object and image row y, the ``V_body * W`` tokens attend to each other. Its processor calls
  the fused op :func:`drpose.ops.row_attention`; :class:`RowwiseMultiViewAttention` refuses any
  other processor, so the model can never silently fall back to per-view attention (PSHuman does
  when xformers is not enabled).
* ``attn2`` — cross-attention to the per-row prompt embedding, unchanged from diffusers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention
from torch import Tensor, nn

from drpose.ops import row_attention


@dataclass(frozen=True)
class ViewLayout:
    """How the batch rows of the UNet are grouped (see the module docstring).

    Attributes:
        num_body_views: views that take part in the row-wise attention (PSHuman: 6).
        face_view: whether each object has one more view, last, the face crop (PSHuman: True).
        face_fusion: blend the face view into the front view's top-centre ninth in ``attn1``.
        joint_domains: whether the batch is [normal | colour] and ``attn1`` joins the two halves.
    """

    num_body_views: int
    face_view: bool
    face_fusion: bool
    joint_domains: bool

    @property
    def views_per_object(self) -> int:
        return self.num_body_views + int(self.face_view)

    @property
    def rows_multiple(self) -> int:
        """The batch size N must be a multiple of this."""
        return self.views_per_object * (2 if self.joint_domains else 1)


class RowwiseMultiViewAttnProcessor:
    """Processor of ``attn_mv``: q/k/v projections, :func:`drpose.ops.row_attention`, ``to_out``.

    Input ``hidden_states`` ``(B*V, H*W, C)`` (rows (object, body view), view fastest); output of
    the same shape. ``views`` and ``height`` come from the block at every call.
    """

    def __init__(self, backend: str = "auto") -> None:
        self.backend = backend

    def __call__(
        self,
        attn: Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        views: int,
        height: int,
    ) -> Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("row-wise multi-view attention takes no context and no mask")
        rows, tokens, _ = hidden_states.shape
        heads = attn.heads

        def split_heads(x: Tensor) -> Tensor:  # (B*V, H*W, heads*D) -> (B*V, heads, H*W, D)
            return x.view(rows, tokens, heads, -1).transpose(1, 2)

        q = split_heads(attn.to_q(hidden_states))
        k = split_heads(attn.to_k(hidden_states))
        v = split_heads(attn.to_v(hidden_states))
        out = row_attention(
            q, k, v, views=views, height=height, scale=attn.scale, backend=self.backend
        )
        out = out.transpose(1, 2).reshape(rows, tokens, -1)
        return attn.to_out[1](attn.to_out[0](out))


class RowwiseMultiViewAttention(Attention):
    """diffusers ``Attention`` (weights ``to_q/to_k/to_v`` without bias, ``to_out.0`` with bias)
    that only accepts :class:`RowwiseMultiViewAttnProcessor`.

    ``set_attn_processor`` / ``enable_xformers_memory_efficient_attention`` on the UNet would
    otherwise turn it into per-view self-attention without any error; here they raise.
    """

    def __init__(self, dim: int, heads: int, backend: str = "auto") -> None:
        super().__init__(
            query_dim=dim,
            heads=heads,
            dim_head=dim // heads,
            bias=False,
            out_bias=True,
            processor=RowwiseMultiViewAttnProcessor(backend),
        )

    def set_processor(self, processor: Any) -> None:
        if not isinstance(processor, RowwiseMultiViewAttnProcessor):
            raise TypeError(
                "attn_mv is PSHuman's row-wise multi-view attention and only runs "
                f"RowwiseMultiViewAttnProcessor, got {type(processor).__name__}; set processors "
                "per module (e.g. only on attn1/attn2) instead of replacing all of them"
            )
        super().set_processor(processor)


def fuse_face_view(x: Tensor, views_per_object: int, height: int, width: int) -> Tensor:
    """PSHuman's face fusion on an attention output (pshuman_attention.md section 5, step 5).

    Args:
        x: ``(N, H*W, C)``, rows grouped by object (``views_per_object`` consecutive rows, the face
            view last, the front view first).

    Returns:
        A new ``(N, H*W, C)`` tensor where, in every object, the front view's tokens at rows
        ``[0, H//3)`` and columns ``[W//3, W - W//3)`` are ``0.5 * own + 0.5 * face``, with
        ``face`` the face view (detached, as PSHuman) resized bilinearly (align_corners False, no
        antialias) to that region. For H, W divisible by 3 this is PSHuman's fusion exactly; for
        other sizes PSHuman fails and we resize to the region's size instead (nothing happens
        below 3x3).
    """
    n, tokens, channels = x.shape
    top, left = height // 3, width // 3
    right = width - left
    if top == 0 or right == left:  # latents smaller than 3x3 have no face region
        return x
    grid = x.view(n // views_per_object, views_per_object, height, width, channels)
    face = grid[:, -1].detach().permute(0, 3, 1, 2)  # (G, C, H, W)
    face = F.interpolate(face, size=(top, right - left), mode="bilinear", align_corners=False)
    fused = grid.clone()
    fused[:, 0, :top, left:right] = 0.5 * grid[:, 0, :top, left:right] + 0.5 * face.permute(
        0, 2, 3, 1
    )
    return fused.view(n, tokens, channels)


def join_domains(x: Tensor) -> Tensor:
    """``(N, L, C) -> (N/2, 2L, C)``: row r = [normal row r tokens, colour row r tokens]."""
    n, tokens, channels = x.shape
    return x.view(2, n // 2, tokens, channels).transpose(0, 1).reshape(n // 2, 2 * tokens, channels)


def split_domains(x: Tensor) -> Tensor:
    """Inverse of :func:`join_domains`: ``(N/2, 2L, C) -> (N, L, C)``."""
    half, tokens2, channels = x.shape
    tokens = tokens2 // 2
    return x.view(half, 2, tokens, channels).transpose(0, 1).reshape(2 * half, tokens, channels)


def square_side(tokens: int) -> int:
    """The side of a square latent with ``tokens`` = H*W tokens (PSHuman's latents are square)."""
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(
            f"MultiViewUNet needs square latents (as PSHuman): a transformer block got {tokens} "
            "tokens, not a square number"
        )
    return side


class MultiViewTransformerBlock(nn.Module):
    """One PSHuman transformer block: norm1/attn1, norm_mv/attn_mv, norm2/attn2, norm3/ff.

    Built from a diffusers ``BasicTransformerBlock`` (whose norm1, attn1, norm2, attn2, norm3 and
    ff it takes over, so the weight names are diffusers' and stock SD weights load) plus
    ``norm_mv`` (LayerNorm) and ``attn_mv`` (:class:`RowwiseMultiViewAttention`, ``to_out``
    zero-initialised as PSHuman, so a fresh block starts as the stock block). Registration order
    matches PSHuman's state dict.

    ``forward`` has ``BasicTransformerBlock``'s positional signature, which
    ``Transformer2DModel`` (and its gradient checkpointing) calls.
    """

    def __init__(self, block: BasicTransformerBlock, layout: ViewLayout, backend: str = "auto"):
        super().__init__()
        if block.norm_type != "layer_norm" or block.only_cross_attention or block.attn2 is None:
            raise ValueError(
                "MultiViewTransformerBlock wraps SD-style blocks: layer_norm, cross-attn"
            )
        self.layout = layout
        dim = block.norm1.normalized_shape[0]
        self.norm1 = block.norm1
        self.attn1 = block.attn1
        self.norm_mv = nn.LayerNorm(dim, eps=block.norm1.eps)
        self.attn_mv = RowwiseMultiViewAttention(dim, block.attn1.heads, backend)
        nn.init.zeros_(self.attn_mv.to_out[0].weight)
        nn.init.zeros_(self.attn_mv.to_out[0].bias)
        self.norm2 = block.norm2
        self.attn2 = block.attn2
        self.norm3 = block.norm3
        self.ff = block.ff

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        timestep: Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        class_labels: Tensor | None = None,
    ) -> Tensor:
        """``hidden_states`` ``(N, H*W, C)`` in the batch layout of the module docstring;
        ``encoder_hidden_states`` ``(N, S, C_ctx)``. Returns ``(N, H*W, C)``."""
        if attention_mask is not None or encoder_attention_mask is not None:
            raise NotImplementedError("MultiViewTransformerBlock does not take attention masks")
        kwargs = cross_attention_kwargs or {}
        layout = self.layout
        rows, tokens, _ = hidden_states.shape
        if rows % layout.rows_multiple:
            raise ValueError(
                f"MultiViewUNet: batch of {rows} rows is not a multiple of "
                f"{layout.rows_multiple} = {'2 domains x ' if layout.joint_domains else ''}"
                f"{layout.views_per_object} views per object; rows must be "
                "[normal: objects x views | colour: objects x views], view fastest"
            )
        side = square_side(tokens)

        h = self.norm1(hidden_states)
        if layout.joint_domains:
            a = split_domains(self.attn1(join_domains(h), **kwargs))
        else:
            a = self.attn1(h, **kwargs)
        if layout.face_fusion:
            a = fuse_face_view(a, layout.views_per_object, side, side)
        x = hidden_states + a

        x = self._rowwise_multiview(x, side)

        x = x + self.attn2(self.norm2(x), encoder_hidden_states=encoder_hidden_states, **kwargs)
        return x + self.ff(self.norm3(x))

    def _rowwise_multiview(self, x: Tensor, height: int) -> Tensor:
        """Residual row-wise attention over the body views; face rows pass unchanged."""
        rows, tokens, channels = x.shape
        per_object, body = self.layout.views_per_object, self.layout.num_body_views
        grid = x.view(rows // per_object, per_object, tokens, channels)
        body_rows = grid[:, :body].reshape(-1, tokens, channels)
        a = self.attn_mv(self.norm_mv(body_rows), views=body, height=height)
        a = a.view(rows // per_object, body, tokens, channels)
        if per_object == body:
            return x + a.view(rows, tokens, channels)
        return torch.cat([grid[:, :body] + a, grid[:, body:]], dim=1).view(rows, tokens, channels)
