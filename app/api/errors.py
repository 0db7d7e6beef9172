"""Errors as JSON with a message and the right status, never a traceback.

The body is OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, so the official
client raises its usual ``BadRequestError`` / ``AuthenticationError`` / ``RateLimitError`` with
our message. A ``ValueError`` from the core (a limit, an unknown concept, a bad layer) is the
user's to fix: 400. Anything else is logged here and answered with a short 500.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from fastapi import Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import limits

log = logging.getLogger(__name__)

UPLOAD_OVERHEAD = 64 * 1024  # multipart headers and fields around an uploaded file's bytes

API_PREFIXES = ("/v1/",)  # paths whose errors this module answers (Gradio keeps its own)
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    """An error with an HTTP status, answered as JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = dict(headers or {})


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param, "code": None}
    }


def from_exception(error: BaseException) -> ApiError:
    """An :class:`ApiError` for anything raised while answering (ValueError: 400, else 500)."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, ValueError):
        text = str(error).strip().splitlines()[0][:1000] if str(error).strip() else type(error).__name__
        return ApiError(400, text)
    log.error("API request failed", exc_info=error)
    return ApiError(500, f"internal error ({type(error).__name__}); the server log has the details")


def response_for(error: BaseException) -> JSONResponse:
    api_error = from_exception(error)
    return JSONResponse(
        error_body(api_error.status, api_error.message, api_error.param),
        status_code=api_error.status,
        headers=api_error.headers,
    )


def describe_validation(error: RequestValidationError) -> tuple[str, str | None]:
    """The first problem of a request body as one line (``temperature: must be ...``) and its field."""
    problems = error.errors()
    if not problems:
        return "the request is not valid", None
    first = problems[0]
    where = [str(part) for part in first.get("loc", ()) if part != "body"]
    field = ".".join(where) or None
    message = str(first.get("msg", "is not valid")).removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        message = "unknown field (see /docs for the fields this server accepts)"
    elif first.get("type") == "json_invalid":
        message = "the body is not valid JSON"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{field}: {message}{more}" if field else f"{message}{more}", field


class BodyTooLarge(HTTPException):
    """A request body over the upload limit (FastAPI lets an HTTPException out of body parsing)."""

    def __init__(self, size: int, cap: int) -> None:
        message = limits.current().over("max_upload_bytes", f"a request body of {size:,} bytes or more", cap)
        super().__init__(413, message)


class BodyLimit:
    """ASGI middleware: a request body to the API over the upload limit gets a JSON 413, whether
    its Content-Length says so up front or its chunks add up to it. Other paths pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(API_PREFIXES):
            await self.app(scope, receive, send)
            return
        cap = limits.current().max_upload_bytes + UPLOAD_OVERHEAD
        length = dict(scope.get("headers", [])).get(b"content-length", b"")
        if length.isdigit() and int(length) > cap:
            error = BodyTooLarge(int(length), cap)
            await JSONResponse(error_body(413, error.detail), status_code=413)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > cap:
                raise BodyTooLarge(seen, cap)
            return message

        await self.app(scope, counted, send)


class ApiRoute(APIRoute):
    """A route whose every failure is answered as JSON: bad bodies 400, ``ValueError`` 400, ..."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as error:
                message, field = describe_validation(error)
                return JSONResponse(error_body(400, message, field), status_code=400)
            except HTTPException as error:  # e.g. 413 from the body limit
                return JSONResponse(
                    error_body(error.status_code, str(error.detail)),
                    status_code=error.status_code,
                    headers=error.headers,
                )
            except Exception as error:
                return response_for(error)

        return answer


async def handle_http_error(request: Request, error: Exception) -> Any:
    """Starlette's own errors outside a route (404 no such route, 405) as JSON on the API's paths."""
    if not isinstance(error, HTTPException):
        return response_for(error)
    if not request.url.path.startswith(API_PREFIXES):
        return await http_exception_handler(request, error)
    message = error.detail if isinstance(error.detail, str) else str(error.detail)
    if error.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
    return JSONResponse(error_body(error.status_code, message), status_code=error.status_code, headers=error.headers)


EXCEPTION_HANDLERS = {HTTPException: handle_http_error}
