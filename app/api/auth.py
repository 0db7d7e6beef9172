"""The API's login: the same ``--auth USER:PASSWORD`` as the app, sent with every request.

Gradio's login form gives a browser a session cookie; programs send the credentials instead:

- ``Authorization: Bearer PASSWORD`` (what the OpenAI client sends as its ``api_key``), or
- ``Authorization: Basic base64(USER:PASSWORD)`` (``curl -u USER:PASSWORD``, and the browser's
  own login prompt on ``/docs``).

Without ``--auth`` the API is as open as the app. Comparisons use ``hmac.compare_digest``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable

from fastapi import Request

from app.api.errors import ApiError

CHALLENGE = {"WWW-Authenticate": 'Basic realm="Steering Lab", charset="UTF-8"'}


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def credentials_ok(header: str | None, auth: tuple[str, str]) -> bool:
    """Whether an ``Authorization`` header carries ``auth`` (Bearer password or Basic user:password)."""
    if not header:
        return False
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return _same(value, auth[1])
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        return bool(sep) and _same(user, auth[0]) & _same(password, auth[1])
    return False


def require_login(auth: tuple[str, str] | None) -> Callable[[Request], None]:
    """A FastAPI dependency that lets a request through only with the server's credentials."""

    def check(request: Request) -> None:
        if auth is None:
            return
        header = request.headers.get("authorization")
        if not header:
            raise ApiError(
                401,
                "this server needs a login: send 'Authorization: Bearer <password>' "
                "(the OpenAI client's api_key) or HTTP basic auth (curl -u user:password)",
                headers=CHALLENGE,
            )
        if not credentials_ok(header, auth):
            raise ApiError(401, "wrong user name or password", headers=CHALLENGE)

    return check
