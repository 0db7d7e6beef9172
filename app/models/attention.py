"""Attention that gives each row of a left-padded batch the very bits it gets alone.

Rows of different prompt lengths share a batch by left padding. torch's attention over a padded
row, with the padding masked out, is the same sum in another order (other shapes, another kernel
path) than over the row alone: logits differ by about 3e-5 on Qwen 0.5B, enough to flip a greedy
near-tie, so a student's reply could change with whoever else was in the batch. Registered as
``steering_lab_sdpa`` (:func:`install`), this attention runs torch's (transformers' ``sdpa``) once
for the batch when no row is padded, and otherwise once per padded row on that row's own keys,
the call the row alone would make. A row whose mask is anything but left padding plus the causal
pattern (a finished row, a sliding window) keeps its batched mask.

Attention over a few query rows (a decoding step) runs on one OpenMP thread when it reads at most
``ONE_THREAD_ELEMENTS`` key elements: waking the second, sleeping thread costs more (SmolLM2: a
step 0.85x as long; docs/performance.md). Its result does not depend on the thread count.
"""

from __future__ import annotations

import weakref
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from app.models.threads import one_thread

NAME = "steering_lab_sdpa"
ONE_THREAD_QUERIES = 4  # a decoding step's query rows ...
ONE_THREAD_ELEMENTS = 2**20  # ... over at most this many key elements (batch x heads x keys x head size)


def install(model: PreTrainedModel) -> bool:
    """Make ``model`` use this attention where it uses transformers' ``sdpa``; whether it does now."""
    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the same masks as sdpa: None when no row is padded
    if model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(NAME)
    return bool(model.config._attn_implementation == NAME)


def _small(queries: int, key_elements: int) -> bool:
    """Attention small enough that waking a second OpenMP thread costs more than it saves."""
    return queries <= ONE_THREAD_QUERIES and key_elements <= ONE_THREAD_ELEMENTS


def _sdpa(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    if _small(query.shape[2], key.numel()):
        with one_thread():
            return sdpa_attention_forward(module, query, key, value, mask, **kwargs)
    return sdpa_attention_forward(module, query, key, value, mask, **kwargs)


def left_padding(mask: torch.Tensor, q_length: int) -> list[int | None]:
    """Per row of a boolean mask [batch, 1, queries, keys]: its left padding when the mask is exactly
    that padding plus the causal pattern (for the queries that are not padding themselves), else None."""
    keys = mask.shape[-1]
    last = mask[:, 0, -1]  # [batch, keys]: the last query sees every key of its row
    pads = (~last).long().cumprod(-1).sum(-1)  # leading masked keys
    positions = torch.arange(keys - q_length, keys)[:, None]  # each query's place among the keys
    columns = torch.arange(keys)[None, :]
    expected = (columns <= positions)[None] & (columns[None] >= pads[:, None, None])  # [batch, queries, keys]
    real = positions[None, :, 0] >= pads[:, None]  # [batch, queries]: queries that are not padding
    matches = ((mask[:, 0] == expected) | ~real[:, :, None]).all(-1).all(-1)
    return [int(p) if ok else None for p, ok in zip(pads.tolist(), matches.tolist())]


def attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' sdpa attention, row by row for padded rows (module docstring)."""
    if attention_mask is None or attention_mask.dtype != torch.bool or query.shape[0] == 1:
        return _sdpa(module, query, key, value, attention_mask, **kwargs)
    q_length = query.shape[2]
    pads = _padding_of(attention_mask, q_length)
    if not any(pads):  # no row padded (or none recognisably): one call, as before
        return _sdpa(module, query, key, value, attention_mask, **kwargs)
    with one_thread() if _small(q_length, key[:1].numel()) else nullcontext():  # once for the rows, not once a row
        return _row_by_row(module, query, key, value, attention_mask, pads, **kwargs), None


def _padding_of(mask: torch.Tensor, q_length: int) -> list[int | None]:
    """:func:`left_padding`, once per mask: every layer of a forward pass gets the same mask object."""
    global _last
    seen = _last
    if seen is not None and seen[0]() is mask and seen[1] == q_length:
        return seen[2]
    pads = left_padding(mask, q_length)
    _last = (weakref.ref(mask), q_length, pads)  # one assignment: safe for concurrent readers
    return pads


_last: tuple[weakref.ref[torch.Tensor], int, list[int | None]] | None = None


def _row_by_row(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor,
    pads: list[int | None],
    **kwargs: Any,
) -> torch.Tensor:
    q_length, keys = query.shape[2], key.shape[2]
    rows = []
    for row, pad in enumerate(pads):
        here = slice(row, row + 1)
        skipped = max(0, (pad or 0) - (keys - q_length))  # queries that are padding themselves
        alone = pad is not None and (q_length == 1 or keys - pad == q_length - skipped)
        if alone:  # the call this row makes alone: its own keys, no mask
            args = (query[here, :, skipped:], key[here, :, pad:], value[here, :, pad:], None)
            out, _ = sdpa_attention_forward(module, *args, **kwargs)
            if skipped:
                out = torch.cat([out.new_zeros(1, skipped, *out.shape[2:]), out], dim=1)
        else:
            out, _ = sdpa_attention_forward(module, query[here], key[here], value[here], attention_mask[here], **kwargs)
        rows.append(out)
    return torch.cat(rows)
