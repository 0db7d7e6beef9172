"""The paper's metrics (Bo et al. 2025; docs/results.md): Effect, perplexity and PNE.

- Effect of an output o on a concept: ``cos(e_o, ē₊) − cos(e_o, ē₋)``, where ``e`` are
  all-MiniLM-L6-v2 sentence embeddings and ``ē±`` the means of the (unit) embeddings of
  reference texts for each pole. Positive means "reads like the positive pole".
- Perplexity of an output under the *unsteered* model, optionally counting only the tokens
  that follow its prompt.
- PNE (perplexity-normalised effect): ``(Effect_d − Effect_0) / (PPL_d / PPL_0)``: how far
  steering at strength d moved the output, discounted by how much less fluent it got.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from app.analysis.embeddings import embed
from app.storage import concepts_dir as default_concepts_dir

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


# --- reference sets -------------------------------------------------------------------


@dataclass(frozen=True)
class References:
    """Reference texts for the two poles of a concept (not its extraction examples)."""

    name: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]


def load_references(name: str, concepts_dir: str | Path | None = None) -> References:
    """Read ``<concepts_dir>/references/<name>.json`` ({"name", "positive", "negative"}).

    Raises:
        ValueError: a bad name, a missing file, or lists that are empty or not strings.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"bad reference set name {name!r}: use lowercase letters, digits, _ and -")
    root = Path(concepts_dir) if concepts_dir is not None else default_concepts_dir()
    path = root / "references" / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"no reference set for {name!r}: expected {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read reference set {path}: {error}") from error
    sides = {}
    for side in ("positive", "negative"):
        texts = data.get(side) if isinstance(data, dict) else None
        if not isinstance(texts, list) or not texts:
            raise ValueError(f"{path}: {side!r} must be a non-empty list of texts")
        if not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError(f"{path}: every {side!r} entry must be a non-empty string")
        sides[side] = tuple(texts)
    return References(name=name, positive=sides["positive"], negative=sides["negative"])


# --- Effect ---------------------------------------------------------------------------

_centroids: dict[tuple[str, ...], np.ndarray] = {}
_centroid_lock = threading.Lock()
_MAX_CACHED_SETS = 256


def pole_centroid(texts: Sequence[str]) -> np.ndarray:
    """Unit vector along the mean of the texts' unit embeddings ``[384]`` (cached per set)."""
    key = tuple(texts)
    if not key:
        raise ValueError("a pole needs at least one reference text")
    with _centroid_lock:
        cached = _centroids.get(key)
    if cached is not None:
        return cached
    mean = embed(key).mean(axis=0)  # the mean of unit vectors is shorter than 1
    centroid = mean / max(float(np.linalg.norm(mean)), 1e-12)  # so cos(e, ē) = e · centroid
    with _centroid_lock:
        if len(_centroids) >= _MAX_CACHED_SETS:
            _centroids.clear()
        _centroids[key] = centroid
    return centroid


def effect_from_embeddings(output_embeddings: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """Effect for precomputed unit embeddings ``[n, 384]`` and unit pole centroids ``[384]``."""
    return output_embeddings @ positive - output_embeddings @ negative


def effect(outputs: Sequence[str], positive_refs: Sequence[str], negative_refs: Sequence[str]) -> np.ndarray:
    """Effect of each output: ``cos(e_o, mean e₊) − cos(e_o, mean e₋)``, ``[n]`` float64.

    Positive values read like the positive references. Typical steering effects are small
    (±0.05–0.15 in the paper); the range is [−2, 2].
    """
    if isinstance(outputs, str):
        raise TypeError("effect() takes a list of outputs, not one string")
    pos, neg = pole_centroid(positive_refs), pole_centroid(negative_refs)
    return effect_from_embeddings(embed(outputs), pos, neg).astype(np.float64)


# --- perplexity -----------------------------------------------------------------------


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def perplexity_from_ids(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    scored_from: Sequence[int] | None = None,
    batch_size: int = 8,
    max_batch_tokens: int = 4096,
) -> list[float]:
    """Perplexity of token sequences: ``exp(mean NLL)`` of tokens ``scored_from[i]`` onwards.

    Token ``j`` is predicted from tokens ``< j``, so ``scored_from`` is at least 1 (the first
    token has no prediction). Rows are right-padded, which a causal model never attends to,
    so padding leaves every value unchanged. Sequences with nothing to score give NaN.
    """
    n = len(sequences)
    starts = [1] * n if scored_from is None else [max(1, int(s)) for s in scored_from]
    if len(starts) != n:
        raise ValueError(f"scored_from has {len(starts)} entries for {n} sequences")
    device = _model_device(model)
    result = [math.nan] * n
    # Similar lengths share a batch; a token budget bounds the [batch, pos, vocab] logits.
    order = sorted(
        (i for i in range(n) if len(sequences[i]) > starts[i]),
        key=lambda i: len(sequences[i]),
    )
    next_row = 0
    while next_row < len(order):
        batch = [order[next_row]]
        next_row += 1
        while (
            next_row < len(order)
            and len(batch) < batch_size
            and len(sequences[order[next_row]]) * (len(batch) + 1) <= max_batch_tokens
        ):
            batch.append(order[next_row])
            next_row += 1
        width = max(len(sequences[i]) for i in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long, device=device)
        mask = torch.zeros((len(batch), width), dtype=torch.long, device=device)
        for row, i in enumerate(batch):
            ids[row, : len(sequences[i])] = torch.as_tensor(list(sequences[i]), dtype=torch.long)
            mask[row, : len(sequences[i])] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits  # [batch, pos, vocab]
        # at least float32 for the log-softmax (bf16/fp16 logits lose too much)
        dtype = torch.promote_types(logits.dtype, torch.float32)
        for row, i in enumerate(batch):
            start, end = starts[i], len(sequences[i])
            scored = logits[row, start - 1 : end - 1].to(dtype)  # [n_scored, vocab]
            nll = F.cross_entropy(scored, ids[row, start:end])
            result[i] = math.exp(float(nll))
    return result


def perplexity(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    prompts: Sequence[str] | None = None,
    batch_size: int = 8,
    max_batch_tokens: int = 4096,
) -> list[float]:
    """Perplexity of each text under ``model`` (call it outside any steering block).

    Args:
        model: a Hugging Face causal LM (its output has ``.logits``).
        tokenizer: the model's tokenizer.
        texts: the texts to score (e.g. generated replies).
        prompts: when given, ``texts[i]`` is scored as the continuation of ``prompts[i]``:
            the prompt (with the tokenizer's special tokens) and the text (without) are
            tokenised separately and joined, and only the text's tokens count.
            Without prompts every token after the first is scored (after BOS, if the
            tokenizer adds one).
        batch_size: rows per forward pass; max_batch_tokens caps rows × length.
    Returns:
        One float per text; NaN when a text has no token to score.
    """
    if isinstance(texts, str):
        raise TypeError("perplexity() takes a list of texts, not one string")
    if prompts is None:
        sequences = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
        starts = [1] * len(texts)
    else:
        if len(prompts) != len(texts):
            raise ValueError(f"{len(prompts)} prompts for {len(texts)} texts")
        sequences, starts = [], []
        for prompt, text in zip(prompts, texts, strict=True):
            head = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
            tail = list(tokenizer(text, add_special_tokens=False)["input_ids"])
            sequences.append(head + tail)
            starts.append(len(head))
    return perplexity_from_ids(model, sequences, starts, batch_size, max_batch_tokens)


# --- PNE ------------------------------------------------------------------------------


def pne(
    effect_d: np.ndarray | Sequence[float] | float,
    effect_0: np.ndarray | Sequence[float] | float,
    ppl_d: np.ndarray | Sequence[float] | float,
    ppl_0: np.ndarray | Sequence[float] | float,
) -> np.ndarray:
    """Perplexity-normalised effect ``(Effect_d − Effect_0) / (PPL_d / PPL_0)``, elementwise.

    Inputs broadcast like numpy arrays (e.g. one baseline against many strengths).
    Raises ValueError for a non-positive perplexity; NaN inputs give NaN.
    """
    e_d, e_0 = (
        np.asarray(effect_d, dtype=np.float64),
        np.asarray(effect_0, dtype=np.float64),
    )
    p_d, p_0 = np.asarray(ppl_d, dtype=np.float64), np.asarray(ppl_0, dtype=np.float64)
    if np.any(p_d <= 0) or np.any(p_0 <= 0):
        raise ValueError("perplexities must be positive")
    return (e_d - e_0) / (p_d / p_0)
