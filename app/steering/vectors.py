"""Steering vectors: one direction per layer, with arithmetic and safe file formats.

A vector's ``layers`` hold the raw directions as extracted (e.g. a difference of means).
``norms`` hold the typical residual-stream norm of each layer on the model it came from: the
engine uses them to turn a strength in normalized units into the size of what it adds
(README, "Strength units"). Arithmetic works on the raw directions (``happy * 2 - sad``) and returns new objects.

Files: safetensors (tensors ``layer.<L>``, everything else as JSON in the header metadata); the
llama.cpp control-vector GGUF is in ``control_vectors``. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from app.storage import atomic_write

FORMAT = "steering-lab-vector/1"
NORMALIZED_UNIT = 0.1  # strength 1 adds 10% of the layer's typical residual norm
DEFAULT_STRENGTH = 4.0  # the strength of a vector that has no recommendation (yet)
MAX_FILE_BYTES = 256 * 1024 * 1024  # every layer of a 70B model's vector is ~1 MB; more is not a vector


class VectorFileError(ValueError):
    """A vector file that cannot be used: unreadable, foreign, or for another model."""


@dataclass(frozen=True)
class SteeringVector:
    """A concept direction for every layer it was extracted at.

    Attributes:
        name: concept name, e.g. ``"happy"``.
        model_id: the model it was extracted from.
        model_fingerprint: ``LoadedModel.fingerprint`` of that model.
        hidden_size: d_model; every direction has this length.
        layers: layer index -> direction ``[d_model]`` (float32, CPU).
        norms: layer index -> typical residual-stream norm at that layer.
        method: how it was made (``mean_diff``, ``pca``, ``probe``, ``arithmetic``, ``gguf``).
        metadata: JSON-serializable extras (per-layer statistics, recommendations, source hash).
    """

    name: str
    model_id: str
    model_fingerprint: str
    hidden_size: int
    layers: dict[int, torch.Tensor]
    norms: dict[int, float] = field(default_factory=dict)
    method: str = "mean_diff"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for layer, direction in self.layers.items():
            if direction.shape != (self.hidden_size,):
                raise ValueError(
                    f"vector {self.name!r}: layer {layer} has shape {tuple(direction.shape)}, "
                    f"expected ({self.hidden_size},)"
                )

    # --- recommendations -------------------------------------------------------------------
    @property
    def recommended_layers(self) -> list[int]:
        layers = self.metadata.get("recommended_layers")
        if layers:
            return [int(layer) for layer in layers if int(layer) in self.layers]
        ordered = sorted(self.layers)
        return [ordered[len(ordered) // 2]] if ordered else []

    @property
    def recommended_strength(self) -> float:
        return float(self.metadata.get("recommended_strength", DEFAULT_STRENGTH))

    # --- what the engine adds -------------------------------------------------------------
    def delta(self, layer: int, strength: float, unit: str = "normalized") -> torch.Tensor:
        """What steering adds at ``layer`` for ``strength``: ``[d_model]`` float32.

        ``normalized``: ``strength * 0.1 * norm[layer] * unit direction`` (comparable across
        models and layers). ``raw``: ``strength * direction`` (the researcher's coefficient).
        """
        if layer not in self.layers:
            available = ", ".join(str(k) for k in sorted(self.layers)) or "none"
            raise ValueError(f"vector {self.name!r} has no layer {layer} (has: {available})")
        if not math.isfinite(strength):
            raise ValueError(f"strength must be a finite number, got {strength}")
        direction = self.layers[layer]
        if unit == "raw":
            return direction * strength
        if unit != "normalized":
            raise ValueError(f"unknown strength unit {unit!r}: use 'normalized' or 'raw'")
        size = direction.norm()
        if size == 0:
            return torch.zeros_like(direction)
        norm = self.norms.get(layer)
        if norm is None:
            raise ValueError(f"vector {self.name!r} has no residual norm for layer {layer}")
        return direction * (strength * NORMALIZED_UNIT * norm / size)

    # --- arithmetic -------------------------------------------------------------------------
    def _combine(self, other: SteeringVector, sign: float) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if (other.model_fingerprint, other.hidden_size) != (self.model_fingerprint, self.hidden_size):
            raise ValueError(
                f"cannot combine {self.name!r} ({self.model_id}) with {other.name!r} "
                f"({other.model_id}): they come from different models"
            )
        layers = {layer: direction.clone() for layer, direction in self.layers.items()}
        for layer, direction in other.layers.items():
            layers[layer] = layers.get(layer, torch.zeros_like(direction)) + sign * direction
        norms = {**other.norms, **self.norms}
        op = "+" if sign > 0 else "-"
        return replace(
            self,
            name=f"({self.name} {op} {other.name})",
            layers=layers,
            norms=norms,
            method="arithmetic",
            metadata=_merged_metadata(self, other),
        )

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, 1.0)

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, -1.0)

    def __mul__(self, factor: float) -> SteeringVector:
        if not isinstance(factor, (int, float)):
            return NotImplemented
        if not math.isfinite(factor):
            raise ValueError(f"cannot scale a vector by {factor}")
        return replace(
            self,
            name=f"{factor:g}*{self.name}",
            layers={layer: direction * factor for layer, direction in self.layers.items()},
            method="arithmetic",
            metadata=dict(self.metadata),
        )

    __rmul__ = __mul__

    def __truediv__(self, divisor: float) -> SteeringVector:
        return self * (1.0 / divisor)

    def __neg__(self) -> SteeringVector:
        return replace(
            self * -1.0,
            name=f"-{self.name}",
            metadata=dict(self.metadata),
        )

    # --- files --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write safetensors atomically (temp file + rename)."""
        path = Path(path)
        tensors = {f"layer.{layer}": direction.contiguous() for layer, direction in self.layers.items()}
        header = {
            "format": FORMAT,
            "name": self.name,
            "model_id": self.model_id,
            "model_fingerprint": self.model_fingerprint,
            "hidden_size": self.hidden_size,
            "method": self.method,
            "norms": {str(layer): norm for layer, norm in self.norms.items()},
            "metadata": self.metadata,
        }
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"steering_lab": json.dumps(header)}))
        return path

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        expect_fingerprint: str | None = None,
        expect_hidden_size: int | None = None,
    ) -> SteeringVector:
        """Read a vector saved by :meth:`save`; check it fits the model that will use it.

        Raises:
            FileNotFoundError: no file at ``path``.
            VectorFileError: anything else wrong with the file (never another error type).
        """
        path = Path(path)
        check_file_size(path)
        try:
            with safe_open(path, framework="pt") as handle:
                header_text = (handle.metadata() or {}).get("steering_lab")
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except FileNotFoundError:
            raise
        except Exception as error:  # safetensors raises several types for a bad file
            raise VectorFileError(f"{path.name} is not a readable safetensors file: {short_reason(error)}") from None
        if header_text is None:
            raise VectorFileError(f"{path.name} is a safetensors file but not a Steering Lab vector")
        try:
            header = json.loads(header_text)
            if not isinstance(header, dict):
                raise TypeError("the header is not a JSON object")
            norms, metadata = header.get("norms", {}), header.get("metadata", {})
            if not isinstance(norms, dict) or not isinstance(metadata, dict):
                raise TypeError("'norms' and 'metadata' must be JSON objects")
            layers = {}
            for key, tensor in tensors.items():
                prefix, _, index = key.partition(".")
                if prefix == "layer":
                    layers[layer_index(index)] = tensor.float()
            vector = cls(
                name=str(header["name"]),
                model_id=str(header["model_id"]),
                model_fingerprint=str(header["model_fingerprint"]),
                hidden_size=_hidden_size(header["hidden_size"]),
                layers=layers,
                norms={layer_index(k): float(v) for k, v in norms.items()},
                method=str(header.get("method", "mean_diff")),
                metadata=dict(metadata),
            )
            vector._check_values()
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError, RuntimeError) as error:
            raise VectorFileError(f"{path.name} has a malformed Steering Lab header: {short_reason(error)}") from None
        vector.check_model(expect_fingerprint, expect_hidden_size, source=path.name)
        return vector

    def _check_values(self) -> None:
        """Raise ``ValueError`` for values no extraction makes: NaN/inf, bad norms or recommendations."""
        if not self.layers:
            raise ValueError("it holds no layers")
        for layer, direction in self.layers.items():
            if not bool(torch.isfinite(direction).all()):
                raise ValueError(f"layer {layer} holds NaN or infinite values")
        for layer, norm in self.norms.items():
            if not (math.isfinite(norm) and norm >= 0):
                raise ValueError(f"the residual norm of layer {layer} is {norm}")
        recommended = self.metadata.get("recommended_layers")
        if recommended is not None and not (
            isinstance(recommended, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in recommended)
        ):
            raise ValueError(f"recommended_layers must be a list of layer numbers, got {recommended!r:.80}")
        strength = self.metadata.get("recommended_strength", DEFAULT_STRENGTH)
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
            raise ValueError(f"recommended_strength must be a finite number, got {strength!r:.80}")

    def check_model(self, fingerprint: str | None, hidden_size: int | None, source: str | None = None) -> None:
        """Raise :class:`VectorFileError` if this vector was made on another model."""
        where = source or self.name
        if hidden_size is not None and hidden_size != self.hidden_size:
            raise VectorFileError(
                f"{where} was extracted from {self.model_id} (hidden size {self.hidden_size}); "
                f"the loaded model has hidden size {hidden_size}. Extract the concept again on this model."
            )
        if fingerprint is not None and fingerprint != self.model_fingerprint:
            raise VectorFileError(
                f"{where} was extracted from another model ({self.model_id}, fingerprint "
                f"{self.model_fingerprint}); the loaded model's fingerprint is {fingerprint}. "
                "Extract the concept again on this model."
            )


def check_file_size(path: Path) -> None:
    """Refuse a vector file that cannot be read or is over ``MAX_FILE_BYTES`` before opening it.

    Raises:
        FileNotFoundError: no file at ``path``.
        VectorFileError: it cannot be read, or it is too big.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise
    except OSError as error:
        raise VectorFileError(f"{path.name} cannot be read: {error.strerror or error}") from None
    if size > MAX_FILE_BYTES:
        raise VectorFileError(f"{path.name} is {size:,} bytes; vector files are limited to {MAX_FILE_BYTES:,}")


def layer_index(text: object) -> int:
    """A layer number from a tensor name or JSON key: digits only, at most 4 of them."""
    text = str(text)
    if not (text.isascii() and text.isdigit() and len(text) <= 4):
        raise ValueError(f"{text[:20]!r} is not a layer number")
    return int(text)


def _hidden_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 1 << 20:
        raise ValueError(f"hidden_size must be a positive whole number, got {value!r:.40}")
    return value


def short_reason(error: BaseException) -> str:
    return (str(error) or type(error).__name__).splitlines()[0][:200]


def _merged_metadata(a: SteeringVector, b: SteeringVector) -> dict[str, Any]:
    layers = list(dict.fromkeys([*a.recommended_layers, *b.recommended_layers]))
    return {
        "recommended_layers": layers,
        "recommended_strength": a.recommended_strength,
        "parts": [a.name, b.name],
    }
