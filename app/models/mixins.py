"""A faster forward given to a module by a subclass, and taken back again.

Only the module's class changes (to ``<prefix><Class>``, a subclass of the mix-in and of the class
it had, made once per pair): the module object, its parameters, buffers, state-dict keys and hooks
stay as they are, so whoever holds the model sees the same tree. :mod:`app.models.norms` and
:mod:`app.models.layer_step` use it; the mix-in's forward falls back to ``plain_class.forward``.
"""

from __future__ import annotations

from typing import Any, cast

from torch import nn

_classes: dict[tuple[type, type], type] = {}


def mix_in(module: nn.Module, mixin: type[nn.Module], prefix: str) -> None:
    """Make ``module`` an instance of ``mixin`` over its own class; ``plain_class`` names the class it had."""
    original = type(module)
    key = (mixin, original)
    if key not in _classes:
        _classes[key] = type(f"{prefix}{original.__name__}", (mixin, original), {"plain_class": original})
    module.__class__ = _classes[key]


def mix_out(model: nn.Module, mixin: type[nn.Module]) -> list[nn.Module]:
    """Give every module of ``model`` that :func:`mix_in` made a ``mixin`` its class back; returns them."""
    restored = []
    for module in model.modules():
        if isinstance(module, mixin):
            module.__class__ = cast(Any, module).plain_class
            restored.append(module)
    return restored
