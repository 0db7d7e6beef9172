"""``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions`` in the OpenAI format.

Each request becomes ``GenerationRequest`` rows (``app.api.parsing``) that go through
``lab.generate`` / ``lab.stream``: the same batcher, limits and engine lock as the UI, so a
script and a student in the browser share batches. ``stream: true`` answers with server-sent
events (``data: {chunk}`` ... ``data: [DONE]``); closing the connection stops this request's rows.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from app.api import parsing
from app.api.context import ApiContext
from app.api.errors import ApiRoute, error_body, from_exception
from app.api.schemas import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList, StreamingFields
from app.lab import Lab
from app.steering.generation import GenerationRequest, GenerationResult, validate_batch

Kind = Literal["chat", "text"]
FINISH = {"eos": "stop", "length": "length", "stopped": "stop"}
STARTED = int(time.time())


def prepare(lab: Lab, make: Callable[[], list[GenerationRequest]]) -> list[GenerationRequest]:
    """Build the rows (vectors built on first use) and check them as the batcher will."""
    requests = make()
    validate_batch(lab.engine, requests, lab.lm.tokenizer, is_chat=lab.lm.is_chat)
    return requests


def usage(results: Sequence[GenerationResult], prompts: int) -> dict[str, int]:
    """Token counts; a prompt generated ``n`` times is counted once."""
    per_prompt = len(results) // max(prompts, 1)
    prompt_tokens = sum(r.prompt_tokens for r in results[:: max(per_prompt, 1)])
    completion_tokens = sum(len(r.token_ids) for r in results)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def choice(kind: Kind, index: int, result: GenerationResult) -> dict[str, Any]:
    reason = FINISH.get(result.finish_reason or "", "stop")
    if kind == "chat":
        return {
            "index": index,
            "message": {"role": "assistant", "content": result.text},
            "finish_reason": reason,
            "logprobs": None,
        }
    return {"index": index, "text": result.text, "finish_reason": reason, "logprobs": None}


def completion_body(
    kind: Kind, lab: Lab, results: Sequence[GenerationResult], prompts: int, steering: list[str]
) -> dict[str, Any]:
    return {
        "id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": lab.lm.model_id,
        "choices": [choice(kind, i, r) for i, r in enumerate(results)],
        "usage": usage(results, prompts),
        "steering": steering,
    }


def new_text(sent: str, text: str, finished: bool) -> tuple[str, str]:
    """``(piece, now_sent)``: what to send of ``text`` after ``sent``. A half-decoded character
    (U+FFFD at the end) waits for its next bytes; text the decoder changed is not sent again."""
    visible = text if finished else text.rstrip("\ufffd")
    if sent.startswith(visible):
        return "", sent
    common = len(os.path.commonprefix([sent, visible]))
    return visible[common:], visible


def sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


async def event_stream(
    context: ApiContext, lab: Lab, kind: Kind, requests: list[GenerationRequest], prompts: int, include_usage: bool
) -> AsyncIterator[bytes]:
    """The chunks of a streamed completion, as the OpenAI API sends them."""
    head = {
        "id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": lab.lm.model_id,
    }

    def chunk(index: int, text: str | None, reason: str | None, role: bool = False) -> bytes:
        if kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            part: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": reason, "logprobs": None}
        else:
            part = {"index": index, "text": text or "", "finish_reason": reason, "logprobs": None}
        return sse({**head, "choices": [part]})

    if kind == "chat":
        for index in range(len(requests)):
            yield chunk(index, None, None, role=True)
    sent = [""] * len(requests)
    done = [False] * len(requests)
    final: list[GenerationResult] = []
    stop = threading.Event()
    try:
        async for results in context.admission.stream(lab.stream(requests, stop), stop):
            final = results
            for index, result in enumerate(results):
                if done[index]:
                    continue
                piece, sent[index] = new_text(sent[index], result.text, result.finish_reason is not None)
                if result.finish_reason is not None:
                    done[index] = True
                    if piece:
                        yield chunk(index, piece, None)
                    yield chunk(index, None, FINISH[result.finish_reason])
                elif piece:
                    yield chunk(index, piece, None)
    except Exception as error:  # the headers are sent: the error goes in the stream
        api_error = from_exception(error)
        yield sse(error_body(api_error.status, api_error.message, api_error.param))
        return
    if include_usage and final:
        yield sse({**head, "choices": [], "usage": usage(final, prompts)})
    yield sse("[DONE]")


def build_openai_router(context: ApiContext) -> APIRouter:
    router = APIRouter(tags=["OpenAI-compatible"], route_class=ApiRoute)

    @router.get("/v1/models", response_model=ModelList, summary="The loaded model (the only one served)")
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=context.lab.lm.model_id, created=STARTED)])

    async def answer(
        request: Request,
        kind: Kind,
        body: StreamingFields,
        make: Callable[[Lab], list[GenerationRequest]],
        prompts: int,
    ) -> Any:
        lab = context.lab
        requests = await context.admission.run(lambda: prepare(lab, lambda: make(lab)))
        steering = parsing.describe(requests[0].steering)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                event_stream(context, lab, kind, requests, prompts, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        results = await context.admission.run_while_connected(lambda stop: lab.generate(requests, stop), request)
        return JSONResponse(completion_body(kind, lab, results, prompts, steering))

    @router.post(
        "/v1/chat/completions",
        summary="Chat, steered: OpenAI chat completions plus steering, positions and preferences",
    )
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Any:
        return await answer(request, "chat", body, lambda lab: parsing.chat_requests(lab, context.uploads, body), 1)

    @router.post("/v1/completions", summary="Continue text, steered: OpenAI completions plus steering")
    async def completions(request: Request, body: CompletionRequest) -> Any:
        prompts = 1 if isinstance(body.prompt, str) else len(body.prompt)
        return await answer(
            request, "text", body, lambda lab: parsing.completion_requests(lab, context.uploads, body), prompts
        )

    return router
