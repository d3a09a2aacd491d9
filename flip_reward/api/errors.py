"""One error shape for every 4xx and 5xx:

    {"error": {"type": "...", "message": "...", "field": "items[3].response" | null, "request_id": "..."}}

No stack traces and no internal paths reach the client; they go to the log.
"""

from __future__ import annotations

import logging
from typing import Literal, get_args

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope, Send

from flip_reward.engines.base import EngineUnavailable

log = logging.getLogger(__name__)


# Every error `type` the API answers with, and its one status. The item codes (the `code` of a
# per-item error, flip_reward/scoring/outcomes.py) are here too: the trainer routes answer an item the
# service failed on with its code as the error type.
ErrorType = Literal[
    # the request is wrong: fix it, do not retry
    "validation_error",
    "unreadable_sample",
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",
    "body_too_large",
    "too_many_items",
    "too_many_messages",
    "field_too_long",
    "request_timeout",
    # the service cannot take or finish it now: retry (with Retry-After where given)
    "not_ready",
    "engine_unavailable",
    "queue_full",
    "shed",  # waited, and could no longer finish within its deadline: refused before it started
    "timeout",
    "client_disconnected",
    "internal_error",
    # one item failed (trainer routes)
    "engine_error",
    "unreadable_logprobs",
    "no_output",
    "judge_no_score",
    "context_overflow",
    "empty_instruction",
]
STATUS: dict[ErrorType, int] = {
    "validation_error": 422,
    "unreadable_sample": 422,
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "body_too_large": 413,
    "too_many_items": 413,
    "too_many_messages": 413,
    "field_too_long": 413,
    "request_timeout": 408,
    "not_ready": 503,
    "engine_unavailable": 503,
    "queue_full": 429,
    "shed": 429,
    "timeout": 504,
    "client_disconnected": 499,  # nobody listens: for the access log and the request metrics
    "internal_error": 500,
    "engine_error": 503,
    "unreadable_logprobs": 502,
    "no_output": 502,
    "judge_no_score": 502,
    "context_overflow": 413,
    "empty_instruction": 422,
}
assert set(STATUS) == set(get_args(ErrorType))


class ApiError(Exception):
    """An error the API reports as it is: a type from the closed list above (its status comes from
    STATUS), a human message, the field it is about."""

    def __init__(
        self, type_: ErrorType, message: str, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.field, self.headers = STATUS[type_], type_, message, field, headers


def error_response(
    request: Request,
    type_: ErrorType,
    message: str,
    field: str | None = None,
    headers=None,
    status: int | None = None,  # only for an HTTP error Starlette raised with a status of its own
) -> JSONResponse:
    body = {
        "error": {
            "type": type_,
            "message": message,
            "field": field,
            "request_id": getattr(request.state, "request_id", None),
        }
    }
    return JSONResponse(body, status_code=status or STATUS[type_], headers=headers)


async def send_error(
    scope: Scope, send: Send, type_: ErrorType, message: str, field: str | None = None, headers=None
) -> None:
    """The same error, sent straight from an ASGI middleware (outside FastAPI's handlers)."""
    response = error_response(Request(scope), type_, message, field, headers)
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


_TYPE_NAMES: dict[int, ErrorType] = {
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
        return error_response(request, "validation_error", message, field)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.type, exc.message, exc.field, exc.headers)

    @app.exception_handler(EngineUnavailable)
    async def _engine_down(request: Request, exc: EngineUnavailable) -> JSONResponse:
        return error_response(request, "engine_unavailable", str(exc), headers={"Retry-After": "5"})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = getattr(exc, "error_type", None) or _TYPE_NAMES.get(exc.status_code, "bad_request")
        return error_response(request, type_, str(exc.detail), headers=exc.headers, status=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(request, "internal_error", "internal error; see the server log")
