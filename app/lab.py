"""The lab: one loaded model with its engine and library, and the calls the CLI and UI share."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from app.models.loading import LoadedModel
from app.steering import concepts as concept_store
from app.steering import control_vectors
from app.steering.batcher import GenerationBatcher
from app.steering.engine import NO_STEERING, PositionMode, Steer, Steering, SteeringEngine, StrengthUnit
from app.steering.generation import GenerationRequest, GenerationResult, StopSignal, last
from app.steering.library import VectorLibrary
from app.steering.vectors import SteeringVector


@dataclass(frozen=True)
class SteerSpec:
    """``NAME_OR_FILE[@L1,L2][=STRENGTH]`` parsed; missing parts fall back to the concept's recommendations."""

    source: str
    layers: tuple[int, ...] | None = None
    strength: float | None = None


def parse_steer_spec(text: str) -> SteerSpec:
    """Read ``NAME_OR_FILE[@L1,L2][=STRENGTH]``, saying which part is wrong."""
    text = text.strip()
    if Path(text).is_file():  # a file whose name holds '@' or '='
        return SteerSpec(source=text)
    source, equals, strength_text = text.rpartition("=") if "=" in text else (text, "", "")
    strength = None
    if equals:
        try:
            strength = float(strength_text)
        except ValueError:
            raise ValueError(f"strength {strength_text!r} in {text!r} is not a number (e.g. happy=4)") from None
        if not math.isfinite(strength):
            raise ValueError(f"strength in {text!r} must be a finite number, got {strength_text!r}")
    source, at, layers_text = source.rpartition("@") if "@" in source else (source, "", "")
    layers = parse_layer_numbers(layers_text, f" in {text!r}") if at else None
    if not source:
        raise ValueError(
            f"cannot read steering spec {text!r}: use NAME_OR_FILE[@LAYER,LAYER][=STRENGTH], e.g. happy@12=4"
        )
    return SteerSpec(source=source, layers=layers, strength=strength)


def parse_layer_numbers(text: str, where: str = "") -> tuple[int, ...]:
    """``"10,12"`` -> ``(10, 12)``; ``where`` says where the text came from in the error."""
    if not re.fullmatch(r"\d{1,6}(,\d{1,6})*", text.strip()):
        raise ValueError(f"layers {text!r}{where} must be numbers separated by commas (e.g. happy@10,12)")
    return tuple(int(x) for x in text.strip().split(","))


class Lab:
    """A loaded model, its steering engine and its concept library."""

    def __init__(self, lm: LoadedModel, *, concepts_root: Path | None = None, cache_root: Path | None = None) -> None:
        self.lm = lm
        self.engine = SteeringEngine(lm.model)
        self.library = VectorLibrary(
            self.engine,
            lm.tokenizer,
            model_id=lm.model_id,
            fingerprint=lm.fingerprint,
            concepts_root=concepts_root,
            root=cache_root,
        )
        self.batcher = GenerationBatcher(self.engine, lm.tokenizer, is_chat=lm.is_chat)

    # --- vectors ----------------------------------------------------------------------
    def vector(self, source: str, recommended: bool = True) -> SteeringVector:
        """A vector from a concept name, a concept JSON file, or a saved .safetensors/.gguf vector.

        ``recommended=False``: the caller sets the strength, so a concept's vector may come before
        its strength sweep has run (:meth:`VectorLibrary.get`)."""
        suffix = Path(source).suffix.lower()
        if suffix == ".safetensors":
            return SteeringVector.load(
                source, expect_fingerprint=self.lm.fingerprint, expect_hidden_size=self.lm.hidden_size
            )
        if suffix == ".gguf":  # steers at the layers the file holds, strength 1 raw = as baked in
            return control_vectors.load(
                source,
                name=Path(source).stem,
                model_id=self.lm.model_id,
                model_fingerprint=self.lm.fingerprint,
                expect_fingerprint=self.lm.fingerprint,
                expect_hidden_size=self.lm.hidden_size,
            )
        if suffix == ".json":
            return self.library.get(concept_store.load_concept_file(source), recommended=recommended)
        return self.library.get(source, recommended=recommended)

    def make_steer(
        self,
        spec: str | SteerSpec,
        strength: float | None = None,
        layers: Sequence[int] | None = None,
        unit: StrengthUnit = "normalized",
    ) -> Steer:
        """A :class:`Steer` from a spec; unset strength/layers use the concept's recommendations.

        With a strength given, the vector may come before its strength sweep (while the background
        build runs, which then finishes it); unset layers are then extraction's best layers."""
        spec = parse_steer_spec(spec) if isinstance(spec, str) else spec
        chosen_layers = layers if layers is not None else spec.layers
        chosen_strength = strength if strength is not None else spec.strength
        vector = self.vector(spec.source, recommended=chosen_strength is None)
        if chosen_strength is None:
            chosen_strength = 1.0 if vector.method == "gguf" else vector.recommended_strength
        if vector.method == "gguf":
            unit = "raw"  # a llama.cpp control vector carries its own scale
        return Steer(vector, float(chosen_strength), tuple(chosen_layers) if chosen_layers else None, unit)

    # --- generation -------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest], stop: StopSignal | None = None) -> list[GenerationResult]:
        """Generate all ``requests`` (batched with any other caller's) and return the final results."""
        return last(self.stream(requests, stop))

    def stream(
        self, requests: Sequence[GenerationRequest], stop: StopSignal | None = None
    ) -> Iterator[list[GenerationResult]]:
        """Yield every row's result after each step; rows share a batch with concurrent callers."""
        return self.batcher.stream(requests, stop)

    def compare_requests(
        self, request: GenerationRequest, steers: Sequence[Steer], positions: PositionMode = "all"
    ) -> list[GenerationRequest]:
        """Baseline and steered rows of one prompt with the same seed and settings."""
        return [replace(request, steering=NO_STEERING), replace(request, steering=Steering(tuple(steers), positions))]

    def decode(self, token_ids: Sequence[int]) -> list[str]:
        """Each token as text (for token-level views)."""
        return [self.lm.tokenizer.decode([t]) for t in token_ids]
