"""SAM's image encoder with PyTorch's fused scaled-dot-product attention.

segment-anything's ``Attention`` materialises the attention matrix, adds the decomposed
relative-position terms, applies softmax and multiplies by the values in separate steps.
:class:`SdpaImageEncoder` runs the same encoder, with the same weights, but computes each
attention with ``torch.nn.functional.scaled_dot_product_attention``, passing the
relative-position terms as its additive mask, so PyTorch can pick a fused kernel (the
memory-efficient one on CUDA, which accepts an additive bias).

The blocks' forward is written out here rather than patched into segment-anything's
modules, so the stock model (used, e.g., by the reference side of ``salip bench-speed``)
is left untouched. It follows ``ImageEncoderViT.forward`` and ``Block.forward`` step for
step and calls segment-anything's own helpers for windows and relative positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SdpaImageEncoder",
    "supports_sdpa",
]


def supports_sdpa(encoder: nn.Module) -> bool:
    """Whether ``encoder`` is segment-anything's ``ImageEncoderViT`` (the layout handled)."""
    from segment_anything.modeling.image_encoder import ImageEncoderViT

    return type(encoder) is ImageEncoderViT


def _attention(attn: nn.Module, x: torch.Tensor, query_rows: int | None = None) -> torch.Tensor:
    """segment-anything ``Attention.forward`` with fused attention.

    Args:
        attn: the block's ``Attention`` module (its weights are used).
        x: BxHxWxC tokens (a window, or the whole grid for global blocks).
        query_rows: attend for this many rows of queries at a time (all when None). Each
            query's softmax is its own, so the result is the same; only the largest
            intermediate (the scores and relative-position terms, B·heads x rows·W x H·W)
            shrinks, for runtimes that materialise it (ONNX Runtime).

    Returns:
        BxHxWxC tokens.
    """
    from segment_anything.modeling.image_encoder import get_rel_pos

    b, h, w, _ = x.shape
    qkv = attn.qkv(x).reshape(b, h * w, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * attn.num_heads, h * w, -1).unbind(0)
    rel_h = rel_w = None
    if attn.use_rel_pos:
        # add_decomposed_rel_pos's terms, from the unscaled queries, as an additive mask.
        rh = get_rel_pos(h, h, attn.rel_pos_h)
        rw = get_rel_pos(w, w, attn.rel_pos_w)
        r_q = q.reshape(b * attn.num_heads, h, w, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
    step = h if query_rows is None else max(1, min(query_rows, h))
    outs = []
    for top in range(0, h, step):
        rows = min(step, h - top)
        bias = None
        if rel_h is not None and rel_w is not None:
            part_h, part_w = rel_h[:, top : top + rows], rel_w[:, top : top + rows]
            bias = (part_h[:, :, :, :, None] + part_w[:, :, :, None, :]).reshape(
                b * attn.num_heads, rows * w, h * w
            )
            bias = bias.to(q.dtype)
        q_part = q[:, top * w : (top + rows) * w]
        outs.append(F.scaled_dot_product_attention(q_part, k, v, attn_mask=bias, scale=attn.scale))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    out = out.view(b, attn.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return attn.proj(out)


def _block(blk: nn.Module, x: torch.Tensor, query_rows: int | None = None) -> torch.Tensor:
    """segment-anything ``Block.forward`` with :func:`_attention`."""
    from segment_anything.modeling.image_encoder import window_partition, window_unpartition

    shortcut = x
    x = blk.norm1(x)
    if blk.window_size > 0:
        h, w = x.shape[1], x.shape[2]
        x, pad_hw = window_partition(x, blk.window_size)
    x = _attention(blk.attn, x, query_rows)
    if blk.window_size > 0:
        x = window_unpartition(x, blk.window_size, pad_hw, (h, w))
    x = shortcut + x
    return x + blk.mlp(blk.norm2(x))


class SdpaImageEncoder(nn.Module):
    """A SAM ``ImageEncoderViT`` run with fused attention; same inputs, outputs and weights.

    Args:
        encoder: segment-anything ``ImageEncoderViT`` (shared, not copied).
        query_rows: global attention takes this many rows of queries at a time (see
            :func:`_attention`); None: all at once.
    """

    def __init__(self, encoder: nn.Module, query_rows: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.img_size = encoder.img_size
        self.query_rows = query_rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Bx3xSxS normalised, padded images -> BxCx(S/16)x(S/16) embeddings."""
        enc = self.encoder
        x = enc.patch_embed(x)
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        for blk in enc.blocks:
            x = _block(blk, x, self.query_rows)
        return enc.neck(x.permute(0, 3, 1, 2))
