"""Chat prompts: the template is applied, old turns are dropped first, the newest always stays."""

from __future__ import annotations

import pytest

from app.steering.chat import chat_prompt, history_to_messages

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture
def templated(char_tokenizer):
    tokenizer = char_tokenizer
    tokenizer.chat_template = TEMPLATE
    yield tokenizer
    tokenizer.chat_template = None


def test_template_applied_with_assistant_turn_open(templated):
    text = chat_prompt(templated, [{"role": "user", "content": "hi"}])
    assert text == "<|user|>hi<|end|><|assistant|>"


def test_old_turns_dropped_to_fit_budget(templated):
    messages = history_to_messages(
        [
            {"role": "user", "content": "first question " * 5},
            {"role": "assistant", "content": "first answer " * 5},
            {"role": "user", "content": "second"},
            {"role": "assistant", "content": "ok"},
        ],
        "third",
    )
    full = chat_prompt(templated, messages, budget=10_000)
    assert "first question" in full and full.endswith("<|user|>third<|end|><|assistant|>")
    trimmed = chat_prompt(templated, messages, budget=80)
    assert "first" not in trimmed and "second" in trimmed
    tiny = chat_prompt(templated, messages, budget=5)
    assert tiny == "<|user|>third<|end|><|assistant|>"


def test_plain_transcript_without_template(char_tokenizer):
    text = chat_prompt(char_tokenizer, [{"role": "user", "content": "hi"}])
    assert text == "User: hi\nAssistant:"
    with pytest.raises(ValueError, match="end with the user's message"):
        chat_prompt(char_tokenizer, [{"role": "assistant", "content": "x"}])


def test_history_skips_empty_and_unknown_roles():
    messages = history_to_messages([{"role": "user", "content": " "}, {"role": "tool", "content": "x"}], "q")
    assert messages == [{"role": "user", "content": "q"}]


def test_history_reads_gradio_6_content_parts():
    history = [
        {"role": "user", "content": [{"type": "text", "text": "Plan a trip"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Sure: "}, {"type": "text", "text": "Rome."}]},
    ]
    assert history_to_messages(history, "cheaper?") == [
        {"role": "user", "content": "Plan a trip"},
        {"role": "assistant", "content": "Sure: Rome."},
        {"role": "user", "content": "cheaper?"},
    ]
