"""The REST API's request and response bodies (pydantic), as /docs shows them.

Requests follow the OpenAI API where one exists (chat completions, completions, models) plus the
lab's ``steering``, ``positions`` and ``preferences`` fields; unknown fields are refused, so a
misspelt option is an error instead of silently ignored. Ranges that depend on the server (new
tokens, prompt length, strengths) are checked later against ``app.limits`` by the same
``validate_request`` the UI uses.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

Positions = Literal["all", "prompt", "generated", "last"]
Name = Annotated[str, StringConstraints(min_length=1, max_length=48)]
PREFERENCE_RANGE = 100.0  # the SELECT sliders' range


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SteeringItem(Strict):
    """One concept (or uploaded vector) steering the generation."""

    concept: Name = Field(description="a concept name (GET /v1/concepts) or the name of an uploaded vector")
    strength: float | None = Field(
        None, description="normalized units (1 = 10% of the layer's residual norm); default: the concept's"
    )
    layers: list[int] | None = Field(None, description="layers to steer; default: the concept's recommended layers")
    unit: Literal["normalized", "raw"] = Field("normalized", description="'raw' adds strength × the raw vector")

    @field_validator("strength")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or any(layer < 0 for layer in value)):
            raise ValueError("must be a non-empty list of layer numbers (0 or more)")
        return value


class SteeringFields(Strict):
    """The lab's additions to a completion request (in the OpenAI client: ``extra_body``)."""

    steering: list[SteeringItem] = Field(default_factory=list, description="concepts to steer with")
    positions: Positions = Field("all", description="where to add the vectors: all|prompt|generated|last")
    preferences: dict[str, float] | None = Field(
        None,
        description="preference dimension -> SELECT slider value in [-100, 100] (cost, ambiance, age, time, culture)",
    )

    @field_validator("preferences")
    @classmethod
    def _preferences(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for name, slider in (value or {}).items():
            if not math.isfinite(slider) or abs(slider) > PREFERENCE_RANGE:
                raise ValueError(f"{name} must be a number from -100 to 100, got {slider}")
        return value


class SamplingFields(SteeringFields):
    """Sampling settings shared by every generating endpoint (OpenAI names and defaults)."""

    model: str | None = Field(None, description="accepted for compatibility; the loaded model answers")
    max_tokens: int | None = Field(None, ge=1, description="new tokens (default 128, at most the server's limit)")
    max_completion_tokens: int | None = Field(None, ge=1, description="the newer OpenAI name for max_tokens")
    temperature: float = Field(1.0, ge=0, le=100, description="0 for greedy decoding")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="sample among the k most likely tokens (0: off)")
    seed: int | None = Field(None, description="equal seeds give equal samples; default: a random seed")
    user: str | None = Field(None, max_length=256, description="accepted and ignored")

    @field_validator("temperature", "top_p")
    @classmethod
    def _finite_number(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class StreamOptions(Strict):
    include_usage: bool = False


class StreamingFields(SamplingFields):
    n: int = Field(1, ge=1, description="choices to generate (seeds seed, seed+1, ...)")
    stream: bool = Field(False, description="send server-sent events as tokens arrive")
    stream_options: StreamOptions | None = None


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart] = Field(description="text, or a list of text parts")
    name: str | None = None

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatCompletionRequest(StreamingFields):
    """``POST /v1/chat/completions``: the conversation goes through the model's chat template."""

    messages: list[ChatMessage] = Field(min_length=1, description="ends with the user's message")


class CompletionRequest(StreamingFields):
    """``POST /v1/completions``: the prompt is continued as plain text (no chat template)."""

    prompt: str | list[str] = Field(description="a prompt, or a list of prompts generated in one batch")


class CompareRequest(SamplingFields):
    """``POST /v1/compare``: baseline and steered in one batched call, same seed (the Playground)."""

    prompt: str
    chat: bool = Field(True, description="wrap the prompt in the model's chat template")
    temperature: float = Field(0.0, ge=0, le=100, description="0 (the default here) for greedy decoding")


class ConceptCreateRequest(Strict):
    """``POST /v1/concepts``: a concept from examples, saved under concepts/custom/ and extracted."""

    name: Name
    description: Annotated[str, StringConstraints(max_length=500)] = ""
    positive: list[str] = Field(description="texts that have the concept (at least 2)")
    negative: list[str] = Field(description="texts that do not, ideally matching pairs (at least 2)")
    method: Literal["mean_diff", "lda", "pca", "probe"] = "mean_diff"
    overwrite: bool = Field(False, description="replace a custom concept of this name")


# --- responses ------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "steering-lab"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ConceptInfo(BaseModel):
    name: str
    category: str
    description: str
    examples: list[int] = Field(description="[positive, negative] example counts")
    built: bool = Field(description="whether the vector exists on this model (else built on first use)")
    method: str | None
    recommended_layers: list[int] | None
    recommended_strength: float | None
    custom: bool


class ConceptList(BaseModel):
    model: str
    concepts: list[ConceptInfo]
    uploaded_vectors: list[str]


class ConceptCreated(BaseModel):
    concept: ConceptInfo
    saved: str = Field(description="where the concept file was saved (relative to the concepts folder)")
    layers: dict[str, list[float]] = Field(
        description="per layer: accuracy, separation (d'), residual_norm, vector_norm (index = layer)"
    )


class VectorUploaded(BaseModel):
    name: str
    format: Literal["safetensors", "gguf"]
    layers: list[int]
    hidden_size: int
    recommended_layers: list[int]
    recommended_strength: float


class CompareRow(BaseModel):
    text: str
    completion_tokens: int
    finish_reason: str | None


class CompareResponse(BaseModel):
    model: str
    prompt_tokens: int
    baseline: CompareRow
    steered: CompareRow
    steering: list[str] = Field(description="what steered the steered row: concept ×strength @ layers")
