"""Vectors uploaded over the API, used by name in ``steering`` until the server restarts.

A ``.safetensors`` vector must come from the loaded model (fingerprint and hidden size, checked
by ``SteeringVector.load``); a llama.cpp ``.gguf`` control vector must match its hidden size and
layer count and steers in raw units, as ``--steer file.gguf`` does. Each vector is kept for the
model it was uploaded to, so after a model switch it is refused with a message.
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import replace
from pathlib import Path

from app.lab import Lab
from app.steering import control_vectors
from app.steering.concepts import validate_name
from app.steering.vectors import SteeringVector, VectorFileError

MAX_UPLOADED = 64  # vectors kept per server; the oldest goes first
FORMATS = {".safetensors": "safetensors", ".gguf": "gguf"}


def read_vector(lab: Lab, raw: bytes, filename: str, name: str) -> SteeringVector:
    """A vector from an uploaded file's bytes, checked against ``lab``'s model."""
    suffix = Path(filename).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{filename!r}: upload a .safetensors (Steering Lab) or .gguf (llama.cpp) vector file")
    with tempfile.TemporaryDirectory(prefix="steering-lab-upload-") as folder:
        path = Path(folder) / f"{name}{suffix}"
        path.write_bytes(raw)
        if suffix == ".safetensors":
            loaded = SteeringVector.load(
                path, expect_fingerprint=lab.lm.fingerprint, expect_hidden_size=lab.lm.hidden_size
            )
            vector = replace(loaded, name=name)
        else:
            vector = control_vectors.load(
                path,
                name=name,
                model_id=lab.lm.model_id,
                model_fingerprint=lab.lm.fingerprint,
                expect_fingerprint=lab.lm.fingerprint,
                expect_hidden_size=lab.lm.hidden_size,
            )
    outside = sorted(layer for layer in vector.layers if layer >= lab.engine.n_layers)
    if outside:
        raise VectorFileError(
            f"{filename} has layers {outside} but {lab.lm.model_id} has {lab.engine.n_layers} (0..{lab.engine.n_layers - 1})"
        )
    return vector


class UploadedVectors:
    """name -> vector, per model fingerprint (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._vectors: dict[str, SteeringVector] = {}

    def put(self, name: str, vector: SteeringVector) -> None:
        validate_name(name)
        with self._lock:
            self._vectors.pop(name, None)
            self._vectors[name] = vector
            while len(self._vectors) > MAX_UPLOADED:
                self._vectors.pop(next(iter(self._vectors)))

    def get(self, lab: Lab, name: str) -> SteeringVector | None:
        """The vector uploaded as ``name`` for ``lab``'s model; ``None`` when none was uploaded."""
        with self._lock:
            vector = self._vectors.get(name)
        if vector is not None and vector.model_fingerprint != lab.lm.fingerprint:
            raise ValueError(
                f"vector {name!r} was uploaded for {vector.model_id}; the server now runs {lab.lm.model_id}: upload it again"
            )
        return vector

    def names(self, lab: Lab) -> list[str]:
        with self._lock:
            return sorted(n for n, v in self._vectors.items() if v.model_fingerprint == lab.lm.fingerprint)
