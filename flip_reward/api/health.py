"""Liveness, readiness, service info and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is alive (says nothing about the models)."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """200 once the engine (and the embedder, where the default method needs it) is loaded; 503 before
    that and after the engine dies."""
    service = request.app.state.service
    if service.ready:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "not_ready", "reason": service.not_ready_reason()}, status_code=503)


@router.get("/info")
async def info(request: Request) -> dict:
    """Models, prompt version, similarity defaults and limits."""
    return request.app.state.service.info()


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
