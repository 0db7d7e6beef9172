"""Vectors uploaded over the API, used by name in ``steering``.

A ``.safetensors`` vector must come from the loaded model (fingerprint and hidden size, checked
by ``SteeringVector.load``); a llama.cpp ``.gguf`` control vector must match its hidden size and
layer count and steers in raw units, as ``--steer file.gguf`` does. Each vector is kept for the
model it was uploaded to, so after a model switch it is refused with a message.

Uploads are written (atomically) beside that model's library vectors, in
``<vector cache>/<fingerprint>/uploads/<name>.safetensors``, so a restart or a crash loses none;
at most ``MAX_UPLOADED`` per model are kept, the oldest going first. A disk that cannot take the
file (full, read-only) leaves the vector in memory until the server stops, with a warning.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

from app.lab import Lab
from app.steering import control_vectors
from app.steering.concepts import validate_name
from app.steering.vectors import SteeringVector, VectorFileError

log = logging.getLogger(__name__)

MAX_UPLOADED = 64  # vectors kept per model; the oldest goes first
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
    """name -> vector, per model fingerprint (thread-safe), in memory and on disk."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._vectors: dict[tuple[str, str], SteeringVector] = {}  # (fingerprint, name), oldest first

    @staticmethod
    def folder(lab: Lab) -> Path:
        return lab.library.folder / "uploads"

    def put(self, lab: Lab, name: str, vector: SteeringVector) -> None:
        """Keep ``vector`` (read for ``lab``'s model by :func:`read_vector`) as ``name``."""
        validate_name(name)
        folder, fingerprint = self.folder(lab), lab.lm.fingerprint
        with self._lock:  # the file and the memory agree on which of two uploads of one name won
            try:
                folder.mkdir(parents=True, exist_ok=True)
                vector.save(folder / f"{name}.safetensors")
            except OSError as error:
                log.warning(
                    "could not keep the uploaded vector %r on disk (%s): it lasts until the server stops", name, error
                )
            self._vectors.pop((fingerprint, name), None)
            self._vectors[(fingerprint, name)] = vector
            self._evict(folder, fingerprint)

    def _evict(self, folder: Path, fingerprint: str) -> None:
        mine = [key for key in self._vectors if key[0] == fingerprint]
        for key in mine[: max(len(mine) - MAX_UPLOADED, 0)]:
            del self._vectors[key]
        try:
            files = sorted(folder.glob("*.safetensors"), key=lambda path: path.stat().st_mtime)
            for path in files[: max(len(files) - MAX_UPLOADED, 0)]:
                path.unlink(missing_ok=True)
                self._vectors.pop((fingerprint, path.stem), None)
        except OSError as error:  # e.g. another server on the same cache removed one meanwhile
            log.warning("could not prune uploaded vectors in %s: %s", folder, error)

    def get(self, lab: Lab, name: str) -> SteeringVector | None:
        """The vector uploaded as ``name`` for ``lab``'s model; ``None`` when none was uploaded."""
        validate_name(name)  # a name, never a path
        fingerprint = lab.lm.fingerprint
        with self._lock:
            vector = self._vectors.get((fingerprint, name))
            elsewhere = [v for (fp, n), v in self._vectors.items() if n == name and fp != fingerprint]
        if vector is not None:
            return vector
        path = self.folder(lab) / f"{name}.safetensors"
        if path.is_file():  # uploaded before this server started
            try:
                vector = SteeringVector.load(
                    path, expect_fingerprint=fingerprint, expect_hidden_size=lab.lm.hidden_size
                )
            except (OSError, VectorFileError) as error:
                log.warning("ignoring the uploaded vector %s: %s", path, error)
            else:
                with self._lock:
                    return self._vectors.setdefault((fingerprint, name), vector)
        if elsewhere:
            raise ValueError(
                f"vector {name!r} was uploaded for {elsewhere[-1].model_id}; the server now runs {lab.lm.model_id}: upload it again"
            )
        return None

    def names(self, lab: Lab) -> list[str]:
        fingerprint = lab.lm.fingerprint
        with self._lock:
            known = {name for fp, name in self._vectors if fp == fingerprint}
        return sorted(known | {path.stem for path in self.folder(lab).glob("*.safetensors")})
