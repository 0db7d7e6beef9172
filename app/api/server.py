"""The REST API on the app's own server: ``serve`` passes :func:`app_kwargs` to ``demo.launch``.

Gradio 6 serves the UI with FastAPI and hands ``launch(app_kwargs=...)`` to that FastAPI app, so
the API shares the port, the process and the loaded lab with the UI. The routes are added in
the app's lifespan (before the server accepts a connection); the error handlers are the app's
own, answering only the API's paths. ``/docs`` and ``/openapi.json`` describe the API's routes
alone and need the same login as the API. The Swagger page's script, style and icon are served from
the fastapi-offline package, not from a CDN, so ``/docs`` works on a machine with no internet.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from app.api.auth import require_login
from app.api.context import ApiContext
from app.api.errors import EXCEPTION_HANDLERS, ApiRoute, BodyLimit
from app.api.lab_routes import build_lab_router
from app.api.openai_routes import build_openai_router
from app.serving import LabHolder

TITLE = "Steering Lab API"
DOCS_ASSETS = "/docs/assets"
SWAGGER_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")  # in fastapi_offline/static
DESCRIPTION = """Steered generation for programs, beside the app's UI on the same port.

`/v1/chat/completions`, `/v1/completions` and `/v1/models` follow the OpenAI API (the official
`openai` client works unchanged), plus `steering` (concepts with strengths and layers),
`positions` and `preferences` (the SELECT sliders). The other routes do what the UI's tabs do.
With `serve --auth USER:PASSWORD`, send `Authorization: Bearer PASSWORD` (the OpenAI client's
`api_key`) or HTTP basic auth. Errors are `{"error": {"message", "type", "param", "code"}}`.
"""


def build_router(context: ApiContext, auth: tuple[str, str] | None) -> APIRouter:
    """Every API route, behind the login, with request bodies capped at the upload limit."""
    router = APIRouter(
        route_class=ApiRoute,
        dependencies=[Depends(require_login(auth))],
    )
    router.include_router(build_openai_router(context))
    router.include_router(build_lab_router(context))
    return router


def add_docs(app: FastAPI, router: APIRouter, auth: tuple[str, str] | None) -> None:
    """``/openapi.json`` (the API's routes only) and the Swagger page ``/docs``."""
    schema: dict[str, Any] = {}
    docs_router = APIRouter(route_class=ApiRoute, dependencies=[Depends(require_login(auth))])

    @docs_router.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        if not schema:
            schema.update(get_openapi(title=TITLE, version="1", description=DESCRIPTION, routes=router.routes))
        return JSONResponse(schema)

    @docs_router.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=TITLE,
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        )

    @docs_router.get(DOCS_ASSETS + "/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> FileResponse:
        if name not in SWAGGER_FILES:
            raise HTTPException(404)
        return FileResponse(str(files("fastapi_offline") / "static" / name))

    app.include_router(docs_router)


def app_kwargs(holder: LabHolder, auth: tuple[str, str] | None, context: ApiContext | None = None) -> dict[str, Any]:
    """What ``demo.launch(app_kwargs=...)`` (or ``FastAPI(...)`` in tests) needs to serve the API."""
    router = build_router(context or ApiContext(holder), auth)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.include_router(router)
        add_docs(app, router, auth)
        yield

    make: Callable[[FastAPI], AbstractAsyncContextManager[None]] = lifespan
    return {
        "lifespan": make,
        "exception_handlers": dict(EXCEPTION_HANDLERS),
        "middleware": [Middleware(BodyLimit)],
        "openapi_url": None,
    }
