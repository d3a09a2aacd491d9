"""Limits on everything a client controls. Each refusal is a 413 that names the limit, its value
and the setting that changes it.

- the request body (FLIP_MAX_BODY_BYTES): an ASGI middleware refuses a too-large Content-Length
  before reading anything, and counts the bytes of a streamed (chunked) body as they arrive;
  a body that takes longer than FLIP_BODY_TIMEOUT_S to arrive is a 408 (uvicorn has no such timeout);
- items per batch (FLIP_MAX_BATCH_ITEMS), characters per field (FLIP_MAX_FIELD_CHARS) and
  messages per conversation (FLIP_MAX_MESSAGES): checked on the parsed request, before any work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flip_reward.api.errors import ApiError, ErrorType, send_error
from flip_reward.api.schemas import RewardItem
from flip_reward.config import Settings

log = logging.getLogger(__name__)

_LOGGED_BODY_BYTES = 2000


class BodyTooLarge(HTTPException):
    error_type: ErrorType = "body_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes (FLIP_MAX_BODY_BYTES)")


class BodyTooSlow(HTTPException):
    error_type: ErrorType = "request_timeout"

    def __init__(self, timeout_s: float) -> None:
        super().__init__(408, f"the request body did not arrive within {timeout_s:g} s (FLIP_BODY_TIMEOUT_S)")


class BodyLimitMiddleware:
    """Raising from receive() lets FastAPI's own body reading turn the refusal into the one error
    shape (its handlers re-raise HTTPException); the checks run before the JSON is parsed."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float, log_bodies: bool = False) -> None:
        self.app, self.max_bytes, self.timeout_s, self.log_bodies = app, max_bytes, timeout_s, log_bodies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await send_error(scope, send, BodyTooLarge.error_type, BodyTooLarge(self.max_bytes).detail)
            return

        received = 0
        complete = False
        deadline: float | None = None
        head = bytearray()

        async def limited_receive() -> Message:
            nonlocal received, complete, deadline
            if complete:  # after the body: only disconnect notices, which may take any time
                return await receive()
            if deadline is None:
                deadline = time.monotonic() + self.timeout_s
            try:
                # a timeout scope, not wait_for: no extra task per body message (a per-request cost)
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                log.warning("request body too slow: %d bytes in %.0f s", received, self.timeout_s)
                raise BodyTooSlow(self.timeout_s) from None
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
                if self.log_bodies and len(head) < _LOGGED_BODY_BYTES:
                    head.extend(chunk[: _LOGGED_BODY_BYTES - len(head)])
                if not message.get("more_body", False):
                    complete = True
                    if self.log_bodies:
                        log.info("request body (%d bytes): %s", received, head.decode("utf-8", "replace"))
            else:
                complete = True
            return message

        await self.app(scope, limited_receive, send)


def check_item_limits(
    items: list[RewardItem], settings: Settings, item_field: Callable[[int], str] | None = None
) -> None:
    """413 for the first item field over its limit, named like a validation error (items[3].response);
    `item_field(i)` names item i (None: a single item, named by its fields alone)."""
    max_chars, max_messages = settings.max_field_chars, settings.max_messages
    for index, item in enumerate(items):
        at = f"{item_field(index)}." if item_field else ""
        for name in ("prompt", "response"):
            value = getattr(item, name)
            if value is not None and len(value) > max_chars:
                _too_long(f"{at}{name}", len(value), max_chars)
        if item.messages is None:
            continue
        if len(item.messages) > max_messages:
            raise ApiError(
                "too_many_messages",
                f"{at}messages: {len(item.messages)} messages, the limit is {max_messages} (FLIP_MAX_MESSAGES)",
                f"{at}messages",
            )
        for m_index, message in enumerate(item.messages):
            if len(message.content) > max_chars:
                _too_long(f"{at}messages[{m_index}].content", len(message.content), max_chars)


def _too_long(field: str, length: int, limit: int) -> None:
    raise ApiError(
        "field_too_long", f"{field}: {length} characters, the limit is {limit} (FLIP_MAX_FIELD_CHARS)", field
    )
