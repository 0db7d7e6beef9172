"""Multi-turn chat prompts: a message history formatted with the model's chat template.

The generation loop takes one prompt string; a chat sends the whole conversation through the
tokenizer's template (with the assistant turn opened) and ``chat=False``. Old turns are dropped
first when the conversation outgrows the token budget, so the newest message always fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypedDict

from transformers import PreTrainedTokenizerBase


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


DEFAULT_BUDGET = 1024  # prompt tokens kept from the conversation


def chat_prompt(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], budget: int = DEFAULT_BUDGET) -> str:
    """The conversation as one prompt string, trimmed from the oldest turns to ``budget`` tokens.

    A model without a chat template gets a plain ``User: ... / Assistant:`` transcript.
    """
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("a chat prompt must end with the user's message")
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = list(messages[len(system) :])
    while True:
        text = _render(tokenizer, [*system, *turns])
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= budget or len(turns) == 1:
            return text
        turns = turns[2:] if len(turns) > 2 else turns[-1:]  # drop the oldest exchange


def _render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> str:
    if getattr(tokenizer, "chat_template", None):
        turns = [{"role": m["role"], "content": m["content"]} for m in messages]
        rendered = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        return str(rendered)
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


def history_to_messages(history: Sequence[dict], user_text: str) -> list[Message]:
    """Gradio ``Chatbot`` messages (dicts with role/content) plus the new user message."""
    messages: list[Message] = []
    for item in history:
        role, content = item.get("role"), _text(item.get("content"))
        if role in ("user", "assistant") and content.strip():
            messages.append({"role": role, "content": content})
    messages.append({"role": "user", "content": user_text})
    return messages


def _text(content: object) -> str:
    """Message content as text: Gradio 6 gives a string or a list of parts like ``{"type": "text", "text": ...}``."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "")
    if isinstance(content, list):
        return "".join(_text(part) for part in content)
    return ""
