"""The Playground's presets and layer parsing (pure helpers, no model, no browser)."""

from __future__ import annotations

import pytest

from app.steering.concepts import load_all
from app.steering.engine import POSITION_MODES
from app.steering.layers import parse_layer_list as parse_layers
from app.ui.playground_setup import PRESETS


def test_every_preset_names_existing_concepts_and_a_readable_layer_spec():
    known = load_all()
    assert len(PRESETS) >= 6
    for name, (prompt, chat, rows, layers) in PRESETS.items():
        assert prompt.strip() and isinstance(chat, bool)
        assert 1 <= len(rows) <= 3, name
        for concept, strength in rows:
            assert concept in known, f"preset {name!r} uses unknown concept {concept!r}"
            assert strength is None or -10 <= strength <= 10
        assert parse_layers(layers, 30) is None or all(0 <= layer < 30 for layer in parse_layers(layers, 30))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", None), ("  ", None), ("middle", (15,)), ("12", (12,)), ("10, 12,14", (10, 12, 14)), ("10-12", (10, 11, 12))],
)
def test_parse_layers(text, expected):
    assert parse_layers(text, 30) == expected


@pytest.mark.parametrize(("text", "message"), [("30", "out of range"), ("abc", "cannot read"), ("3-", "cannot read")])
def test_parse_layers_says_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_layers(text, 30)


def test_position_help_names_every_mode():
    from app.ui.playground_setup import POSITION_HELP

    assert all(f"{mode}:" in POSITION_HELP for mode in POSITION_MODES)
