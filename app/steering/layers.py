"""Where the decoder layers of each architecture live.

Steering adds to the residual stream at the output of a decoder layer, so every part of the
engine needs that layer list. One table maps ``config.model_type`` to its path; anything else
goes through one guarded fallback.
"""

from __future__ import annotations

import torch
from torch import nn

LAYER_PATHS: dict[str, str] = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "phi3": "model.layers",
    "gemma": "model.layers",
    "gemma2": "model.layers",
    "gemma3_text": "model.layers",
    "gemma3": "model.language_model.layers",
    "stablelm": "model.layers",
    "gpt2": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
}


def get_layers(model: nn.Module, path: str | None = None) -> nn.ModuleList:
    """Return the decoder layers of ``model``, in order.

    Args:
        model: a Hugging Face causal LM.
        path: dotted attribute path overriding the table (e.g. ``"model.layers"``).

    Raises:
        ValueError: the architecture is unknown and no single layer list could be found.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", "unknown")
    path = path or LAYER_PATHS.get(model_type)
    if path is not None:
        try:
            layers = model.get_submodule(path)
        except AttributeError as error:
            raise ValueError(f"layer path {path!r} does not exist in this {model_type} model: {error}") from None
        if not isinstance(layers, nn.ModuleList):
            raise ValueError(f"{path!r} in this {model_type} model is not an nn.ModuleList")
        return layers
    return _find_layer_list(model, model_type, getattr(config, "num_hidden_layers", None))


def _find_layer_list(model: nn.Module, model_type: str, n_layers: int | None) -> nn.ModuleList:
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and n_layers is not None and len(module) == n_layers
    ]
    if len(candidates) == 1:
        return candidates[0][1]
    found = ", ".join(name for name, _ in candidates) or "none"
    raise ValueError(
        f"unknown architecture {model_type!r}: cannot tell which module holds its decoder layers "
        f"(nn.ModuleList of length {n_layers}: {found}). Add it to app.steering.layers.LAYER_PATHS or pass "
        "the dotted path, e.g. get_layers(model, path='model.layers')."
    )


def layer_output_tensor(output: torch.Tensor | tuple) -> torch.Tensor:
    """The hidden states in a decoder layer's output (a tensor, or a tuple led by one)."""
    return output if isinstance(output, torch.Tensor) else output[0]


def replace_layer_output(output: torch.Tensor | tuple, hidden: torch.Tensor) -> torch.Tensor | tuple:
    """A new layer output with ``hidden`` in place of the hidden states, same shape of container."""
    if isinstance(output, torch.Tensor):
        return hidden
    return (hidden, *output[1:])


def parse_layer_list(text: str | None, n_layers: int) -> tuple[int, ...] | None:
    """Layers typed by a person: ``""`` -> None (the concept's recommended layers), ``"middle"``,
    ``"12"``, ``"10,12"`` or ``"10-14"``. Every number is range-checked before a range is expanded,
    so ``"0-10000000000"`` is an error, not a billion-element list."""
    text = (text or "").strip().lower()
    if not text:
        return None
    if text == "middle":
        return (n_layers // 2,)
    layers: list[int] = []
    for part in text.replace(" ", "").split(","):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"cannot read layers {text!r}: write e.g. 12, or 10,12,14, or 10-14")
        for bound in (low, high) if dash else (low,):
            if len(bound) > 6 or not 0 <= int(bound) < n_layers:
                raise ValueError(f"layer {bound} is out of range: this model has {n_layers} layers (0..{n_layers - 1})")
        layers.extend(range(int(low), int(high) + 1) if dash else [int(low)])
    return tuple(dict.fromkeys(layers))
