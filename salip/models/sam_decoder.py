"""SAM's mask decoder for many single-point prompts over a few slices.

segment-anything's ``MaskDecoder.predict_masks`` repeats the image embedding for every
prompt and runs the whole two-way transformer per prompt. In everything mode a slice gets
hundreds of prompts, and in the transformer's first layer the image side does not depend
on the prompt: the image tokens' key and value projections for token-to-image attention,
and their query projection for image-to-token attention, are computed once per slice here
and shared by its prompts (broadcast, not copied). From the first layer's image update on,
every prompt has its own image tokens, and the rest runs the decoder's own modules as
upstream does.

The arithmetic is upstream's, in the same order (projection, heads, ``q @ k^T``, scale,
softmax, ``@ v``, recombination, output projection), with the decoder's own weights; only
which rows a matrix product sees at once differs, so results agree to float rounding
(``tests/test_speed_paths.py`` compares them with ``MaskDecoder`` itself). On a 2-core
CPU this takes three of the ten image-sized projections of a prompt, and its copies of the
embedding, out of the per-prompt work (benchmarks/RESULTS.md, "Everything mode on CPU").
"""

from __future__ import annotations

import math

import torch

__all__ = ["owner_runs", "predict_masks_shared", "predict_masks_slice"]


def _attend(
    attn: torch.nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """segment-anything ``Attention.forward`` on projections already made: ``q``, ``k``,
    ``v`` are BxNxC' (B may be 1 for a side shared by every prompt, broadcast)."""
    heads = attn.num_heads
    q, k, v = (attn._separate_heads(x, heads) for x in (q, k, v))  # noqa: SLF001
    scores = q @ k.permute(0, 1, 3, 2)
    scores = scores / math.sqrt(q.shape[-1])
    out = torch.softmax(scores, dim=-1) @ v
    return attn.out_proj(attn._recombine_heads(out))  # noqa: SLF001


def _first_layer(
    layer: torch.nn.Module, tokens: torch.Tensor, src: torch.Tensor, pe: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``TwoWayAttentionBlock.forward`` with ``skip_first_layer_pe`` for ``n`` prompts of
    one slice: ``tokens`` nxTxC (also the query PE), ``src`` 1xHWxC its image tokens, ``pe``
    1xHWxC. Returns (queries nxTxC, keys nxHWxC)."""
    queries = layer.norm1(layer.self_attn(q=tokens, k=tokens, v=tokens))
    t2i = layer.cross_attn_token_to_image
    keyed = src + pe
    attn_out = _attend(t2i, t2i.q_proj(queries + tokens), t2i.k_proj(keyed), t2i.v_proj(src))
    queries = layer.norm2(queries + attn_out)
    queries = layer.norm3(queries + layer.mlp(queries))
    i2t = layer.cross_attn_image_to_token
    q = queries + tokens
    attn_out = _attend(i2t, i2t.q_proj(keyed), i2t.k_proj(q), i2t.v_proj(queries))
    return queries, layer.norm4(src + attn_out)


def predict_masks_shared(
    decoder: torch.nn.Module,
    features: torch.Tensor,
    owner: torch.Tensor,
    image_pe: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """segment-anything's ``MaskDecoder.predict_masks`` for prompts of several slices.

    Args:
        decoder: segment-anything ``MaskDecoder`` (two-way transformer of >= 1 layer).
        features: SxCxhxw image embeddings of S slices.
        owner: N int64 index into ``features`` of each prompt's slice. Any order is
            right; a run of prompts of one slice shares its first-layer projections, so
            contiguous runs (as everything mode streams them) share the most.
        image_pe: 1xCxhxw dense positional encoding.
        sparse: NxTxC sparse prompt embeddings.
        dense: NxCxhxw dense prompt embeddings, the same for every prompt (no mask
            input: the prompt encoder's ``no_mask_embed``, expanded).

    Returns:
        (low-resolution mask logits Nx(1+M)x4hx4w, predicted IoU Nx(1+M)); M multimask outputs.
    """
    tokens = _prompt_tokens(decoder, sparse)
    pe = image_pe.flatten(2).permute(0, 2, 1)
    first = decoder.transformer.layers[0]
    queries, keys = [], []
    for slice_index, start, end in owner_runs(owner):
        src = _image_tokens(features[slice_index : slice_index + 1], dense)
        q, k = _first_layer(first, tokens[start:end], src, pe)
        queries.append(q)
        keys.append(k)
    return _after_first_layer(decoder, torch.cat(queries), torch.cat(keys), tokens, pe, features)


def owner_runs(owner: torch.Tensor) -> list[tuple[int, int, int]]:
    """The runs of consecutive prompts of one slice: (slice index, start, end) for
    ``owner`` (N int64 slice of each prompt), in order; ``owner[start:end]`` is the slice."""
    n = len(owner)
    cuts = (torch.nonzero(owner[1:] != owner[:-1]).flatten() + 1).tolist()
    return [(int(owner[a]), a, b) for a, b in zip([0, *cuts], [*cuts, n])]


def predict_masks_slice(
    decoder: torch.nn.Module,
    features: torch.Tensor,
    image_pe: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`predict_masks_shared` for prompts of one slice: ``features`` 1xCxhxw, the
    rest as there. Free of data-dependent control flow, so it traces (the ONNX export of
    :mod:`salip.models.sam_onnx`)."""
    tokens = _prompt_tokens(decoder, sparse)
    pe = image_pe.flatten(2).permute(0, 2, 1)
    src = _image_tokens(features, dense)
    q, k = _first_layer(decoder.transformer.layers[0], tokens, src, pe)
    return _after_first_layer(decoder, q, k, tokens, pe, features)


def _prompt_tokens(decoder: torch.nn.Module, sparse: torch.Tensor) -> torch.Tensor:
    """The output tokens (IoU, masks) before each prompt's sparse embeddings: NxTxC."""
    n = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    return torch.cat((output_tokens.unsqueeze(0).expand(n, -1, -1), sparse), dim=1)


def _image_tokens(features: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """One slice's image tokens, 1xHWxC: its 1xCxhxw embedding plus the dense prompt."""
    return (features + dense[:1]).flatten(2).permute(0, 2, 1)


def _after_first_layer(
    decoder: torch.nn.Module,
    q: torch.Tensor,
    k: torch.Tensor,
    tokens: torch.Tensor,
    pe: torch.Tensor,
    features: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder from its second layer on, as upstream's ``predict_masks``."""
    transformer = decoder.transformer
    n = q.shape[0]
    _, c, h, w = features.shape
    for layer in transformer.layers[1:]:
        q, k = layer(queries=q, keys=k, query_pe=tokens, key_pe=pe)
    attn_out = transformer.final_attn_token_to_image(q=q + tokens, k=k + pe, v=k)
    hs = transformer.norm_final_attn(q + attn_out)
    upscaled = decoder.output_upscaling(k.transpose(1, 2).reshape(n, c, h, w))
    mask_tokens_out = hs[:, 1 : 1 + decoder.num_mask_tokens, :]
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)],
        dim=1,
    )
    b, c2, h2, w2 = upscaled.shape
    masks = (hyper_in @ upscaled.reshape(b, c2, h2 * w2)).reshape(b, -1, h2, w2)
    return masks, decoder.iou_prediction_head(hs[:, 0, :])
