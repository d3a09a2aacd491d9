"""One error shape for every 4xx and 5xx:

    {"error": {"type": "...", "message": "...", "field": "items[3].response" | null, "request_id": "..."}}

No stack traces and no internal paths reach the client; they go to the log.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope, Send

from app.engines.base import EngineUnavailable

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the API reports as it is: status, a machine-readable type, a human message."""

    def __init__(
        self, status: int, type_: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.field, self.headers = status, type_, message, field, headers


def error_response(
    request: Request, status: int, type_: str, message: str, field: str | None = None, headers=None
) -> JSONResponse:
    body = {
        "error": {
            "type": type_,
            "message": message,
            "field": field,
            "request_id": getattr(request.state, "request_id", None),
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


async def send_error(
    scope: Scope, send: Send, status: int, type_: str, message: str, field: str | None = None, headers=None
) -> None:
    """The same error, sent straight from an ASGI middleware (outside FastAPI's handlers)."""
    response = error_response(Request(scope), status, type_, message, field, headers)
    await response(scope, _no_receive, send)


async def _no_receive():  # a JSONResponse never reads the request
    return {"type": "http.disconnect"}


def _field_path(loc: tuple) -> str:
    """('body', 'items', 3, 'response') -> 'items[3].response'."""
    path = ""
    for n, part in enumerate(loc):
        if n == 0 and part in ("body", "query", "path"):  # where it came from; a field may be named "query"
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        elif not str(part).startswith("function-after") and str(part) not in ("str", "list[Message]"):
            path += f".{part}" if path else str(part)
    return path or "body"


_TYPE_NAMES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "body_too_large",
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        field = _field_path(tuple(first.get("loc", ())))
        message = f"{field}: {first.get('msg', 'invalid value')}".replace("Value error, ", "")
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return error_response(request, 422, "validation_error", message, field)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status, exc.type, exc.message, exc.field, exc.headers)

    @app.exception_handler(EngineUnavailable)
    async def _engine_down(request: Request, exc: EngineUnavailable) -> JSONResponse:
        return error_response(request, 503, "engine_unavailable", str(exc), headers={"Retry-After": "5"})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = getattr(exc, "error_type", None) or _TYPE_NAMES.get(exc.status_code, "http_error")
        return error_response(request, exc.status_code, type_, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(request, 500, "internal_error", "internal error; see the server log")
