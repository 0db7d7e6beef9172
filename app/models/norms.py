"""RMS norms computed by the compiled library (:func:`app.models.panels.rms_norm`) instead of torch's ops.

transformers writes a Llama-family RMS norm (and Gemma's, scaled by ``1 + weight``) as seven
tensor operations (cast, square, mean, add, reciprocal square root, two products); for one
decoding row of 576-896 values each costs a few microseconds of dispatch, and a step runs 2 norms
a layer plus the final one (Gemma: 6 a layer). The compiled norm is one call per norm: a SmolLM2
step took 43 ms instead of 47, a gemma-3-270m step 66 ms instead of 73 (interleaved rounds;
docs/performance.md).

Its sum of squares runs in another order than torch's (in double, four fixed lanes), so a norm's
result can differ from transformers' in the last bit of a float32; each row is computed on its
own, so a row's result still does not depend on its batch. Only the norms written out in
``NORMS`` and ``OFFSET_NORMS`` are changed, only while their weight and input are float32 on the CPU; anything else
runs transformers' own forward. Inference only, like the panel product beside it: the compiled
norm has no backward, and it gives the same bits with gradients on or off. The module, its
parameter and hooks stay as they are, and :func:`restore` puts the class back
(:mod:`app.models.kernels` calls both).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from app.models import mixins, panels

# The norms whose forward is weight * (x * rsqrt(mean(x ** 2) + eps)) with ``variance_epsilon``.
NORMS = ("LlamaRMSNorm", "Qwen2RMSNorm", "MistralRMSNorm", "Phi3RMSNorm")
# The norms whose forward is (x * rsqrt(mean(x ** 2) + eps)) * (1 + weight) with ``eps`` (Gemma's).
OFFSET_NORMS = ("GemmaRMSNorm", "Gemma2RMSNorm", "Gemma3RMSNorm")


def use(model: nn.Module) -> int:
    """Make the RMS norms of ``model`` listed in ``NORMS`` and ``OFFSET_NORMS`` use the compiled norm;
    returns how many."""
    changed = 0
    for module in model.modules():
        name = type(module).__name__
        if not isinstance(getattr(module, "weight", None), torch.Tensor):
            continue
        if name in NORMS:
            mixins.mix_in(module, CompiledRMSNorm, "Compiled")
        elif name in OFFSET_NORMS:
            mixins.mix_in(module, CompiledOffsetRMSNorm, "Compiled")
        else:
            continue
        changed += 1
    return changed


def restore(model: nn.Module) -> int:
    """Undo :func:`use`; returns how many norms went back to transformers' forward."""
    return len(mixins.mix_out(model, CompiledRMSNorm)) + len(mixins.mix_out(model, CompiledOffsetRMSNorm))


def _compilable(hidden_states: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        hidden_states.dtype == torch.float32
        and weight.dtype == torch.float32
        and hidden_states.device.type == "cpu"
        and weight.device.type == "cpu"
    )


class CompiledRMSNorm(nn.Module):
    """An RMS norm whose forward is the compiled one where it can be (module docstring)."""

    weight: torch.Tensor
    variance_epsilon: float
    plain_class: type[nn.Module]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not _compilable(hidden_states, self.weight):
            return cast(torch.Tensor, cast(Any, self.plain_class).forward(self, hidden_states))
        return panels.rms_norm(hidden_states, self.weight, self.variance_epsilon)


class CompiledOffsetRMSNorm(nn.Module):
    """A Gemma RMS norm, scaled by ``1 + weight``, whose forward is the compiled one where it can be.

    ``1 + weight`` is computed in float32 as Gemma's forward computes it, once, and again whenever
    the weight is replaced or changed in place (its tensor version; a weight made in inference mode
    has none, so it is computed on every call).
    """

    weight: torch.Tensor
    eps: float
    plain_class: type[nn.Module]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if not _compilable(hidden_states, weight):
            return cast(torch.Tensor, cast(Any, self.plain_class).forward(self, hidden_states))
        version = None if weight.is_inference() else weight._version  # an inference tensor has none: made each call
        held = self.__dict__.get("_offset_scale")
        if held is None or held[0] is not weight or version is None or held[1] != version:
            held = (weight, version, (1.0 + weight.detach()).contiguous())
            self.__dict__["_offset_scale"] = held
        return panels.rms_norm(hidden_states, held[2], self.eps)
