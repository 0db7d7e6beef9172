"""SELECT's scale: UI values u ∈ [−100, 100] (positive = the concept's positive pole, e.g.
"luxury" for cost) and the strengths they map to in the model's functional range (Bo et al. 2025)."""

from __future__ import annotations

UI_MIN, UI_MAX = -100.0, 100.0


def clip_ui(value: float) -> float:
    return min(UI_MAX, max(UI_MIN, float(value)))


def ui_to_strength(value: float, functional_range: float) -> float:
    """Map a UI value in [−100, 100] to a steering strength in ±functional_range."""
    if not functional_range > 0:
        raise ValueError(f"functional range must be positive, got {functional_range}")
    if not UI_MIN <= value <= UI_MAX:
        raise ValueError(f"UI value {value} is outside [{UI_MIN:g}, {UI_MAX:g}]")
    return value / UI_MAX * functional_range


def strength_to_ui(strength: float, functional_range: float) -> float:
    """Inverse of ``ui_to_strength``, clipped to the UI scale."""
    if not functional_range > 0:
        raise ValueError(f"functional range must be positive, got {functional_range}")
    return clip_ui(strength / functional_range * UI_MAX)


def share_label(value: float, labels: tuple[str, str], neutral_within: float = 5.0) -> str:
    """Readable position: ``"35% budget"``, ``"60% luxury"`` or ``"neutral"``.

    Args:
        labels: pole names ``(negative, positive)``, e.g. ``("budget", "luxury")``.
    """
    if abs(value) < neutral_within:
        return "neutral"
    return f"{round(abs(value))}% {labels[1] if value > 0 else labels[0]}"
