"""JSON endpoints for what the UI does: concepts, the Concept Creator, vector files, the
Playground's comparison, health. Each calls the same core functions as its tab."""

from __future__ import annotations

import math
import re
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import anyio
from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import Response

from app import limits
from app.api import parsing
from app.api.context import ApiContext
from app.api.errors import ApiError, ApiRoute
from app.api.openai_routes import prepare
from app.api.schemas import (
    CompareRequest,
    CompareResponse,
    CompareRow,
    ConceptCreated,
    ConceptCreateRequest,
    ConceptInfo,
    ConceptList,
    VectorUploaded,
)
from app.api.uploads import FORMATS, read_vector
from app.lab import Lab
from app.serving import health_info
from app.steering import concepts as concept_store
from app.steering import control_vectors
from app.steering.concepts import Concept
from app.steering.generation import GenerationRequest
from app.steering.layers import parse_layer_list
from app.steering.library import Settings
from app.steering.vectors import SteeringVector


def concept_info(lab: Lab, concept: Concept) -> ConceptInfo:
    vector = lab.library.cached(concept.name)
    return ConceptInfo(
        name=concept.name,
        category=concept.category,
        description=concept.description,
        examples=[len(concept.positive), len(concept.negative)],
        built=vector is not None,
        method=vector.method if vector else None,
        recommended_layers=vector.recommended_layers if vector else None,
        recommended_strength=vector.recommended_strength if vector else None,
        custom=concept.source.startswith("custom/"),
    )


def create_concept(lab: Lab, body: ConceptCreateRequest) -> ConceptCreated:
    """What the Concept Creator's Save and Extract do: save under concepts/custom/, extract, recommend."""
    concept = concept_store.concept_from_dict(
        {
            "name": body.name,
            "description": body.description,
            "category": "custom",
            "positive": body.positive,
            "negative": body.negative,
        },
        source="the request",
    )
    root = lab.library.concepts_root
    existing = lab.library.concepts().get(concept.name)
    if existing is not None and not existing.source.startswith("custom/"):
        raise ApiError(409, f"{concept.name!r} is a built-in concept; choose another name", param="name")
    if existing is None or existing.content_hash != concept.content_hash:
        if existing is not None and not body.overwrite:
            raise ApiError(
                409,
                f"a custom concept named {concept.name!r} exists with other examples: "
                "send overwrite: true, or choose another name",
                param="name",
            )
        concept_store.save_custom(concept, root, overwrite=body.overwrite)
    vector = lab.library.get(concept, Settings(method=body.method))
    info = concept_info(lab, concept).model_copy(
        update={
            "built": True,
            "method": vector.method,
            "recommended_layers": vector.recommended_layers,
            "recommended_strength": vector.recommended_strength,
        }
    )
    stats = vector.metadata.get("stats", {})
    return ConceptCreated(concept=info, saved=f"custom/{concept.name}.json", layers=dict(stats))


def vector_file(
    vector: SteeringVector,
    model_id: str,
    file_format: str,
    strength: float | None,
    layers: Sequence[int] | None = None,
) -> tuple[bytes, str]:
    """A vector as file bytes and a file name; a .gguf holds ``layers`` (default: the recommended ones)
    with ``strength`` (default: the recommended one) baked in, as the lab would steer."""
    stem = re.sub(r"[^a-z0-9_.-]+", "-", f"{vector.name}-{model_id}".lower()).strip("-.") or "vector"
    with tempfile.TemporaryDirectory(prefix="steering-lab-download-") as folder:
        if file_format == "gguf":
            if vector.method == "gguf":
                raise ValueError(
                    "an uploaded .gguf vector is already in llama.cpp's format; download it as safetensors"
                )
            chosen = vector.recommended_strength if strength is None else strength
            chosen_layers = vector.recommended_layers if layers is None else layers
            path = control_vectors.save(vector, Path(folder) / f"{stem}.gguf", chosen, chosen_layers)
        else:
            path = vector.save(Path(folder) / f"{stem}.safetensors")
        return path.read_bytes(), path.name


def compare(lab: Lab, context: ApiContext, body: CompareRequest, stop: threading.Event) -> CompareResponse:
    """The Playground's call: baseline and steered rows with one seed, in one batch."""
    steered = parsing.steering(lab, context.uploads, body)
    if not steered.steers:
        raise ValueError("steering: give at least one concept (or preferences) to compare against the baseline")
    request = GenerationRequest(
        prompt=body.prompt,
        max_new_tokens=parsing.max_new_tokens(body),
        temperature=body.temperature,
        top_k=body.top_k,
        top_p=body.top_p,
        seed=parsing.seed(body),
        chat=body.chat,
    )
    requests = prepare(lab, lambda: lab.compare_requests(request, steered.steers, steered.positions))
    baseline, result = lab.generate(requests, stop)
    return CompareResponse(
        model=lab.lm.model_id,
        prompt_tokens=baseline.prompt_tokens,
        baseline=CompareRow(
            text=baseline.text, completion_tokens=len(baseline.token_ids), finish_reason=baseline.finish_reason
        ),
        steered=CompareRow(
            text=result.text, completion_tokens=len(result.token_ids), finish_reason=result.finish_reason
        ),
        steering=parsing.describe(steered),
    )


def build_lab_router(context: ApiContext) -> APIRouter:
    router = APIRouter(tags=["Steering Lab"], route_class=ApiRoute)

    @router.get("/v1/concepts", response_model=ConceptList, summary="Every concept, with its recommendations")
    async def list_concepts() -> ConceptList:
        lab = context.lab

        def listing() -> ConceptList:  # reads the concept files and the uploads folder
            concepts = sorted(lab.library.concepts().values(), key=lambda c: c.name)
            return ConceptList(
                model=lab.lm.model_id,
                concepts=[concept_info(lab, c) for c in concepts],
                uploaded_vectors=context.uploads.names(lab),
            )

        return await anyio.to_thread.run_sync(listing)  # off the event loop, without a queue slot

    @router.post(
        "/v1/concepts",
        response_model=ConceptCreated,
        summary="Create a concept from examples (saved under concepts/custom/, extracted, recommended)",
    )
    async def post_concept(body: ConceptCreateRequest) -> ConceptCreated:
        lab = context.lab
        return await context.admission.run(lambda: create_concept(lab, body))

    @router.post("/v1/vectors", response_model=VectorUploaded, summary="Upload a vector to steer with by name")
    async def upload_vector(
        request: Request,
        file: UploadFile = File(description="a Steering Lab .safetensors or llama.cpp .gguf vector"),
        name: str | None = Form(None, description="the name to steer with (default: the file's name)"),
    ) -> VectorUploaded:
        limit = limits.current().max_upload_bytes
        raw = await file.read(limit + 1)
        if len(raw) > limit:
            raise ApiError(413, limits.current().over("max_upload_bytes", "the file", len(raw)), param="file")
        filename = file.filename or ""
        chosen = name if name is not None else Path(filename).stem.lower()
        concept_store.validate_name(chosen)
        lab = context.lab
        if await anyio.to_thread.run_sync(lambda: chosen in lab.library.concepts()):  # reads the concept files
            raise ApiError(409, f"{chosen!r} is a concept's name; upload the vector under another name", param="name")

        def read_and_keep() -> SteeringVector:  # file work, off the event loop
            vector = read_vector(lab, raw, filename, chosen)
            context.uploads.put(lab, chosen, vector)
            return vector

        vector = await context.admission.run(read_and_keep)
        return VectorUploaded(
            name=chosen,
            format=FORMATS[Path(filename).suffix.lower()],  # type: ignore[arg-type]
            layers=sorted(vector.layers),
            hidden_size=vector.hidden_size,
            recommended_layers=vector.recommended_layers,
            recommended_strength=1.0 if vector.method == "gguf" else vector.recommended_strength,
        )

    @router.get(
        "/v1/vectors/{name}",
        summary="Download a concept's (or an uploaded) vector as safetensors or llama.cpp GGUF",
        response_class=Response,
        responses={200: {"content": {"application/octet-stream": {}}}},
    )
    async def download_vector(
        name: str,
        format: Literal["safetensors", "gguf"] = Query("safetensors"),
        strength: float | None = Query(None, description="baked into a .gguf (default: the recommended strength)"),
        layers: str | None = Query(None, description="a .gguf's layers, e.g. 10,12 (default: the recommended ones)"),
    ) -> Response:
        lab = context.lab
        concept_store.validate_name(name)

        def known() -> bool:  # reads the concept files, and an upload kept on disk by an earlier server
            return name in lab.library.concepts() or context.uploads.get(lab, name) is not None

        if not await anyio.to_thread.run_sync(known):
            raise ApiError(404, f"no concept or uploaded vector named {name!r} (GET /v1/concepts lists them)")
        most = limits.current().max_strength
        if strength is not None and not (math.isfinite(strength) and abs(strength) <= most):
            raise ApiError(400, f"strength must be a finite number from -{most:g} to {most:g}", param="strength")
        try:
            chosen_layers = parse_layer_list(layers, lab.lm.n_layers)
        except ValueError as error:
            raise ApiError(400, str(error), param="layers") from None
        vector = await context.admission.run(lambda: parsing.resolve_vector(lab, context.uploads, name))
        raw, filename = await context.admission.run(
            lambda: vector_file(vector, lab.lm.model_id, format, strength, chosen_layers)
        )
        return Response(
            raw,
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    @router.post(
        "/v1/compare",
        response_model=CompareResponse,
        summary="Baseline and steered in one batched call, same seed (the Playground)",
    )
    async def post_compare(request: Request, body: CompareRequest) -> CompareResponse:
        lab = context.lab
        return await context.admission.run_while_connected(lambda stop: compare(lab, context, body, stop), request)

    @router.get("/v1/health", summary="Model, hooks in place (0 when idle), library status, limits")
    async def health() -> dict[str, Any]:
        return health_info(context.holder)

    return router
