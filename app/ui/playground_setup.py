"""The Playground's table of preset demos and its small pure helpers (no Gradio here)."""

from __future__ import annotations

from collections.abc import Sequence

from app.steering.engine import Steer

# name -> (prompt, chat template?, [(concept, strength or None = recommended)], layers: "", "middle" or "L,L")
PRESETS: dict[str, tuple[str, bool, list[tuple[str, float | None]], str]] = {
    "“The meeting went” + happy, middle layer": ("The meeting went", False, [("happy", None)], "middle"),
    "“The meeting went” + sad, middle layer": ("The meeting went", False, [("sad", None)], "middle"),
    "“Quantum mechanics is” + pirate": ("Quantum mechanics is", False, [("pirate", None)], ""),
    "“Tell me about your weekend.” + formal": ("Tell me about your weekend.", True, [("formal", None)], ""),
    "“Tell me about your weekend.” + casual": ("Tell me about your weekend.", True, [("casual", None)], ""),
    "“The city at night” + poetic": ("The city at night", False, [("poetic", None)], ""),
    "“Tell me about your day.” + dog + excited (mixing)": (
        "Tell me about your day.",
        True,
        [("dog", None), ("excited", None)],
        "",
    ),
}

POSITION_HELP = (
    "all: every token · prompt: only the prompt's tokens · generated: only new tokens · "
    "last: the prompt's last token and every new one"
)


def describe_steers(steers: Sequence[Steer], positions: str) -> str:
    """One Markdown line: each concept with its strength and layers, then the position mode."""
    parts = [
        f"**{s.vector.name}** ×{s.strength:g} at layer{'s' if len(s.resolved_layers()) > 1 else ''} "
        f"{', '.join(map(str, s.resolved_layers()))}"
        for s in steers
    ]
    return " + ".join(parts) + f" · positions: {positions}"
