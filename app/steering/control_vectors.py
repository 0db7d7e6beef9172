"""llama.cpp control vectors (GGUF): what ``--control-vector FILE`` adds, and reading them back.

llama.cpp's reader (``common_control_vector_load_one`` in common/common.cpp) takes every tensor
``direction.N`` (F32, one dimension of ``n_embd``), multiplies it by the file's scale (1 for
``--control-vector``, S for ``--control-vector-scaled FILE:S``) and adds it to the output of
decoder layer ``N`` (0-based, the same index the lab's hooks use). Layers absent from the file
get zeros; ``N = 0`` is refused (it has no slot), and no key-value metadata is needed.

So an exported file holds exactly the layers the lab steers with, each direction being the lab's
delta at that layer with the strength baked in: plain ``--control-vector`` then steers like the
lab, and a scale halves or doubles it. ``steering_lab.*`` keys record the model (id and
fingerprint), layers, strength and unit the file was made for; llama.cpp ignores them.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from app.steering.vectors import SteeringVector, VectorFileError, check_file_size, layer_index, short_reason
from app.storage import atomic_write

KEY = "steering_lab."  # our metadata keys: concept, model_id, model_fingerprint, layers, strength, unit


def save(
    vector: SteeringVector,
    path: str | os.PathLike[str],
    strength: float,
    layers: Sequence[int],
    unit: str = "normalized",
) -> Path:
    """Write ``vector.delta(layer, strength, unit)`` for each of ``layers`` as ``direction.<layer>``.

    Raises:
        ValueError: no layers, layer 0 (llama.cpp has no slot for it), or a layer the vector lacks.
    """
    import gguf  # optional at import time: only control vectors need it

    logging.getLogger("gguf.gguf_writer").setLevel(logging.WARNING)  # its per-file INFO lines are noise here
    chosen = sorted(set(int(layer) for layer in layers))
    if not chosen:
        raise ValueError("choose at least one layer to export")
    if chosen[0] <= 0:
        raise ValueError(
            "llama.cpp control vectors cannot steer layer 0: llama.cpp adds direction.N to the output of "
            "decoder layer N and has no slot for N = 0. Choose layers from 1 up."
        )
    deltas = {layer: vector.delta(layer, strength, unit).contiguous().numpy() for layer in chosen}
    path = Path(path)

    def write_file(tmp: str) -> None:
        writer = gguf.GGUFWriter(tmp, "controlvector")
        writer.add_string("controlvector.model_hint", str(vector.metadata.get("model_type", vector.model_id)))
        writer.add_uint32("controlvector.layer_count", len(chosen))  # as repeng writes it: directions held
        writer.add_string(KEY + "concept", vector.name)
        writer.add_string(KEY + "model_id", vector.model_id)
        writer.add_string(KEY + "model_fingerprint", vector.model_fingerprint)
        writer.add_array(KEY + "layers", chosen)
        writer.add_float64(KEY + "strength", float(strength))
        writer.add_string(KEY + "unit", unit)
        for layer, delta in deltas.items():
            writer.add_tensor(f"direction.{layer}", delta)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    atomic_write(path, write_file)
    return path


def read(path: str | os.PathLike[str]) -> tuple[dict[int, torch.Tensor], dict[str, Any]]:
    """Every ``direction.<layer>`` of a control vector, and the ``steering_lab.*`` metadata (may be empty).

    Raises:
        FileNotFoundError: no file at ``path``.
        VectorFileError: anything else wrong with the file (never another error type).
    """
    import gguf

    path = Path(path)
    check_file_size(path)
    layers: dict[int, torch.Tensor] = {}
    try:
        reader = gguf.GGUFReader(path)
        for tensor in reader.tensors:
            prefix, _, index = tensor.name.partition(".")
            if prefix != "direction" or not index.isdigit():
                continue
            if tensor.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                raise ValueError(f"{tensor.name} is {tensor.tensor_type.name}; control vectors are F32 or F16")
            data = torch.tensor(tensor.data.astype("float32"), dtype=torch.float32).reshape(-1)
            layers[layer_index(index)] = data
        raw = {key[len(KEY) :]: field.contents() for key, field in reader.fields.items() if key.startswith(KEY)}
        del reader  # let go of the memory map
    except Exception as error:  # gguf raises many types for a bad file
        raise VectorFileError(f"{path.name} is not a readable GGUF file: {short_reason(error)}") from None
    if not layers:
        raise VectorFileError(f"{path.name} holds no 'direction.<layer>' tensors: not a control vector")
    sizes = {direction.numel() for direction in layers.values()}
    if len(sizes) != 1:
        raise VectorFileError(f"{path.name} has directions of different sizes: {sorted(sizes)}")
    if sizes == {0}:
        raise VectorFileError(f"{path.name} has empty directions")
    if not all(bool(torch.isfinite(direction).all()) for direction in layers.values()):
        raise VectorFileError(f"{path.name} holds NaN or infinite values")
    try:
        made_for = _made_for(raw)
    except (TypeError, ValueError) as error:
        raise VectorFileError(f"{path.name} has malformed steering_lab metadata: {short_reason(error)}") from None
    return layers, made_for


def _made_for(raw: dict[str, Any]) -> dict[str, Any]:
    """Check the ``steering_lab.*`` values' types; unknown keys are dropped."""
    made_for: dict[str, Any] = {}
    for key in ("concept", "model_id", "model_fingerprint", "unit"):
        if key in raw:
            if not isinstance(raw[key], str):
                raise TypeError(f"{key} must be text")
            made_for[key] = raw[key]
    if "layers" in raw:
        layers = raw["layers"]
        if not isinstance(layers, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
            raise TypeError("layers must be a list of layer numbers")
        made_for["layers"] = [int(x) for x in layers]
    if "strength" in raw:
        strength = raw["strength"]
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
            raise ValueError(f"strength must be a finite number, got {strength!r:.40}")
        made_for["strength"] = float(strength)
    return made_for


def load(
    path: str | os.PathLike[str],
    *,
    name: str,
    model_id: str,
    model_fingerprint: str,
    expect_fingerprint: str | None = None,
    expect_hidden_size: int | None = None,
) -> SteeringVector:
    """Import a control vector as a vector that steers at the layers it holds, strength 1 ``raw``.

    Its directions already hold the strength (``delta(layer, 1.0, "raw")`` is what llama.cpp adds),
    so its recommended layers are all of them and its recommended strength is 1. A file the lab
    made records the model it was made for: another model's file is refused.

    Args:
        name, model_id, model_fingerprint: what to call the vector and the model it will steer.
        expect_fingerprint: refuse a file made by the lab for a model with another fingerprint.
        expect_hidden_size: refuse a file whose directions have another length.

    Raises:
        FileNotFoundError: no file at ``path``.
        VectorFileError: anything else wrong with the file, or it is for another model.
    """
    path = Path(path)
    layers, made_for = read(path)
    hidden_size = next(iter(layers.values())).numel()
    if expect_hidden_size is not None and hidden_size != expect_hidden_size:
        raise VectorFileError(f"{path.name} has hidden size {hidden_size}; the model has {expect_hidden_size}")
    made_fingerprint = made_for.get("model_fingerprint")
    if expect_fingerprint is not None and made_fingerprint is not None and made_fingerprint != expect_fingerprint:
        raise VectorFileError(
            f"{path.name} was made for another model ({made_for.get('model_id', '?')}, fingerprint "
            f"{made_fingerprint}); the loaded model's fingerprint is {expect_fingerprint}. Export it again "
            "from this model."
        )
    return SteeringVector(
        name=name,
        model_id=model_id,
        model_fingerprint=model_fingerprint,
        hidden_size=hidden_size,
        layers=layers,
        method="gguf",
        metadata={
            "source": path.name,
            "recommended_layers": sorted(layers),
            "recommended_strength": 1.0,
            "made_for": made_for,
        },
    )
