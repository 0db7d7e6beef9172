"""The residual stream of one prompt, layer by layer: capture, the logit lens, the per-layer view.

- :func:`residual_stream`: every layer's output at every position, in one forward pass (read
  through :meth:`SteeringEngine.read_layers`, so it can include steering).
- :func:`layer_view`: the residual-stream norm per layer and token, the logit lens (the model's
  final norm and unembedding applied to every layer's last position), and how each layer's
  residual lines up with a concept's direction.

The other views build on these: :mod:`app.analysis.heatmaps`, :mod:`app.analysis.maps`,
:mod:`app.analysis.sweeps`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from app.steering.engine import NO_STEERING, Steering, SteeringEngine
from app.steering.generation import encode_prompt
from app.steering.vectors import SteeringVector

MAX_TOKENS = 256  # the views draw one column per token; longer prompts are unreadable anyway
DirectionMetric = Literal["cosine", "projection"]

# Where the final norm (applied before the unembedding) lives, by config.model_type.
FINAL_NORM_PATHS: dict[str, str] = {
    "llama": "model.norm",
    "mistral": "model.norm",
    "qwen2": "model.norm",
    "qwen3": "model.norm",
    "phi3": "model.norm",
    "gemma": "model.norm",
    "gemma2": "model.norm",
    "gemma3_text": "model.norm",
    "gemma3": "model.language_model.norm",
    "stablelm": "model.norm",
    "gpt2": "transformer.ln_f",
    "gpt_neox": "gpt_neox.final_layer_norm",
}
_FALLBACK_NORM_PATHS = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm")


# --- capture ----------------------------------------------------------------------------


def encode(tokenizer: PreTrainedTokenizerBase, text: str, *, chat: bool = False, is_chat: bool = False) -> list[int]:
    """Token ids of ``text`` (through the chat template when asked), checked for the views' size."""
    if not (text or "").strip():
        raise ValueError("the prompt is empty: type something to look at")
    ids = encode_prompt(tokenizer, text, chat, is_chat)
    if not ids:
        raise ValueError("the prompt encodes to no tokens: type at least one character")
    if len(ids) > MAX_TOKENS:
        raise ValueError(f"the prompt is {len(ids)} tokens; these views show at most {MAX_TOKENS}: shorten it")
    return ids


def token_texts(tokenizer: PreTrainedTokenizerBase, token_ids: Sequence[int]) -> list[str]:
    return [str(tokenizer.decode([t])) for t in token_ids]


@torch.inference_mode()
def residual_stream(engine: SteeringEngine, token_ids: Sequence[int], steering: Steering = NO_STEERING) -> torch.Tensor:
    """Every layer's output at every position of one text, in one forward pass.

    The reading hooks are registered after the steering hooks, so a steered layer's reading
    includes what steering added there.

    Returns:
        ``[n_layers, pos, d_model]`` float32 on the CPU.
    """
    device = engine.device
    ids = torch.tensor([list(token_ids)], dtype=torch.long, device=device)  # [1, pos]
    positions = torch.arange(ids.shape[1], device=device)[None, :]
    outputs: list[torch.Tensor | None] = [None] * engine.n_layers

    def read(layer: int, hidden: torch.Tensor) -> None:
        outputs[layer] = hidden[0].detach().float().cpu()  # [pos, d_model]

    with engine.lock, engine.steer(steering), engine.read_layers(read):
        engine.base_model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions, use_cache=False)
    return torch.stack(outputs)  # type: ignore[arg-type]


# --- logit lens and the per-layer view --------------------------------------------------


def final_norm(model: nn.Module) -> nn.Module:
    """The norm a model applies to the last residual before its unembedding."""
    model_type = getattr(model.config, "model_type", "unknown")
    known = FINAL_NORM_PATHS.get(model_type)
    for path in (known,) if known else _FALLBACK_NORM_PATHS:
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    raise ValueError(
        f"cannot find the final norm of this {model_type} model: add its path to app.analysis.residuals.FINAL_NORM_PATHS"
    )


@torch.inference_mode()
def logit_lens(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Next-token logits the model would give if each residual ``[..., d_model]`` were its last.

    Applies the final norm, the unembedding and (Gemma 2/3) the logit soft-cap, exactly as the
    model does after its last layer. Returns float32 ``[..., vocab]`` on the CPU.
    """
    head: nn.Module = model.get_output_embeddings()  # type: ignore[operator]
    parameter = next(head.parameters())
    logits = head(final_norm(model)(hidden.to(device=parameter.device, dtype=parameter.dtype))).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.cpu()


@dataclass
class LayerView:
    """What each layer holds for one prompt.

    Attributes:
        tokens: the prompt's tokens as text.
        norms: ``[n_layers, n_tokens]`` residual norm per layer and token.
        lens_tokens / lens_probs: per layer, the logit lens's top tokens at the last position
            and their probabilities (``[n_layers][k]``).
        concept: the concept whose direction ``cosine``/``projection`` measure, if any.
        cosine / projection: ``[n_layers]`` at the last token; ``mean_cosine`` over the tokens
            after the first (the first is an attention sink with an outsized norm).
    """

    tokens: list[str]
    norms: np.ndarray
    lens_tokens: list[list[str]]
    lens_probs: np.ndarray
    concept: str | None = None
    cosine: np.ndarray | None = None
    projection: np.ndarray | None = None
    mean_cosine: np.ndarray | None = None


def direction_scores(hidden: torch.Tensor, vector: SteeringVector, metric: DirectionMetric = "cosine") -> np.ndarray:
    """Cosine (or projection on the unit direction) of ``hidden`` ``[n_layers, pos, d]`` with the
    vector's direction at each layer: ``[n_layers, pos]``; NaN at layers the vector lacks."""
    if metric not in ("cosine", "projection"):
        raise ValueError(f"unknown metric {metric!r}: use 'cosine' or 'projection'")
    scores = np.full(hidden.shape[:2], np.nan)
    for layer in range(hidden.shape[0]):
        direction = vector.layers.get(layer)
        if direction is None or float(direction.norm()) == 0:
            continue
        projection = hidden[layer] @ (direction / direction.norm())  # [pos]
        if metric == "cosine":
            projection = projection / hidden[layer].norm(dim=-1).clamp_min(1e-12)
        scores[layer] = projection.numpy()
    return scores


def layer_view(
    engine: SteeringEngine,
    tokenizer: PreTrainedTokenizerBase,
    token_ids: Sequence[int],
    *,
    vector: SteeringVector | None = None,
    top_k: int = 5,
) -> LayerView:
    """Residual norms, the logit lens at the last position, and (with ``vector``) the concept's
    cosine and projection per layer, from one unsteered forward pass."""
    hidden = residual_stream(engine, token_ids)  # [n_layers, pos, d_model]
    probs = torch.softmax(logit_lens(engine.model, hidden[:, -1, :]), dim=-1)  # [n_layers, vocab]
    top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    view = LayerView(
        tokens=token_texts(tokenizer, token_ids),
        norms=hidden.norm(dim=-1).numpy(),
        lens_tokens=[token_texts(tokenizer, row) for row in top.indices.tolist()],
        lens_probs=top.values.numpy(),
    )
    if vector is not None:
        cosine = direction_scores(hidden, vector, "cosine")
        view.concept = vector.name
        view.cosine = cosine[:, -1]
        view.projection = direction_scores(hidden[:, -1:, :], vector, "projection")[:, 0]
        view.mean_cosine = cosine[:, 1:].mean(axis=1) if cosine.shape[1] > 1 else cosine[:, 0]
    return view
