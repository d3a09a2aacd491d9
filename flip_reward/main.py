"""The FastAPI application: routers, error handlers, request ids and HTTP metrics, and a lifespan
that loads the models in the background and shuts the engine down at the end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from contextlib import asynccontextmanager
from typing import Any

import psutil
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flip_reward import __version__, metrics
from flip_reward.api import compat, health, nemo_gym, rank, reward
from flip_reward.api.auth import ApiKeyMiddleware, document_bearer_auth, load_api_keys, open_paths
from flip_reward.api.errors import install_error_handlers, send_error
from flip_reward.api.json_route import FastLane
from flip_reward.api.limits import BodyLimitMiddleware
from flip_reward.config import Settings
from flip_reward.logs import request_id_var
from flip_reward.service import FlipService, Status

log = logging.getLogger(__name__)


class RequestContextMiddleware:
    """Gives every request an id (the client's X-Request-ID, or a new one), echoes it, and
    records the HTTP metrics by route template and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _client_request_id(scope) or os.urandom(16).hex()  # a uuid4's 32 hex digits, without its object
        scope.setdefault("state", {})["request_id"] = request_id
        request_id_var.set(request_id)
        status = 500
        started = time.perf_counter()

        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode("latin-1")))
            await send(message)

        metrics.IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Answered here rather than by Starlette's outermost handler, so the 500 carries the id too.
            log.exception("unhandled error on %s", scope.get("path"))
            if response_started:
                raise  # too late for an error body; the server closes the connection
            await send_error(scope, send_with_id, "internal_error", "internal error; see the server log")
        finally:
            metrics.IN_FLIGHT.dec()
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            metrics.series(metrics.REQUESTS, label, str(status)).inc()
            metrics.series(metrics.REQUEST_LATENCY, label).observe(time.perf_counter() - started)


def _client_request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            return value.decode("latin-1")[:128]
    return ""


# After an engine failure the process exits (exit code 1) and the orchestrator starts a fresh one.
# If a graceful stop itself hangs, this many seconds later the exit is forced.
FORCED_EXIT_AFTER_S = 60.0


def exit_after_engine_failure(grace_s: float, server: Any) -> None:
    """Leave grace_s for in-flight requests to get their 503, then stop the uvicorn server. The
    engine's processes are killed first: a hung one would otherwise stall the stop or be left behind."""

    def stop() -> None:
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
        server.should_exit = True  # not a signal: uvicorn would re-raise it and hide the exit code

    asyncio.get_running_loop().call_later(grace_s, stop)
    timer = threading.Timer(grace_s + FORCED_EXIT_AFTER_S, os._exit, args=(1,))
    timer.daemon = True
    timer.start()


def create_app(
    settings: Settings | None = None, service: FlipService | None = None, exit_on_load_failure: bool = False
) -> FastAPI:
    settings = settings or Settings()
    service = service or FlipService(settings)

    async def load_models() -> None:
        await service.load()
        if service.status == Status.FAILED and exit_on_load_failure:
            os.kill(os.getpid(), signal.SIGTERM)  # let uvicorn stop cleanly; the exit shows the failure

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(load_models())
        yield
        loading.cancel()
        await service.shutdown()

    app = FastAPI(
        title="flip-reward",
        description="FLIP rewards: a small model infers the instruction behind a response; "
        "the reward is how close that inferred instruction is to the real one.",
        version=__version__,
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.settings = settings
    # Outermost last: request ids first, then the key check, then the body limits, then the fast
    # lane to the scoring routes, then the routes.
    app.add_middleware(FastLane, fastapi_app=app)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        timeout_s=settings.body_timeout_s,
        log_bodies=settings.log_bodies,
    )
    keys, public = load_api_keys(settings), open_paths(settings)
    if keys:  # without keys the service is open: no layer to pass through on every request
        app.add_middleware(ApiKeyMiddleware, keys=keys, open_paths=public)
    app.add_middleware(RequestContextMiddleware)
    install_error_handlers(app)
    app.include_router(reward.router)
    app.include_router(health.router)
    app.include_router(rank.router)
    app.include_router(compat.router)
    app.include_router(nemo_gym.router)
    if keys:
        plain_openapi = app.openapi

        def openapi_with_auth() -> dict:
            if app.openapi_schema is None:
                app.openapi_schema = document_bearer_auth(plain_openapi(), public)
            return app.openapi_schema

        app.openapi = openapi_with_auth  # type: ignore[method-assign]  # FastAPI's documented override
    return app
