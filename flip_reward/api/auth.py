"""Optional API keys: `Authorization: Bearer <key>`.

Keys come from FLIP_API_KEYS (comma-separated) and/or FLIP_API_KEYS_FILE (one per line, e.g. a
mounted secret); with neither set the service is open. The check is an ASGI middleware, so an
unauthenticated request is refused before its body is read or validated: no key, 401; a wrong
key, 403. Keys are compared in constant time against every configured key, and never logged.
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from flip_reward.api.errors import send_error
from flip_reward.config import Settings

# Probes and the API's own documentation need no key; /metrics is added unless FLIP_METRICS_NEED_KEY.
OPEN_PATHS = frozenset({"/health", "/ready", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


def load_api_keys(settings: Settings) -> list[bytes]:
    keys: list[str] = []
    if settings.api_keys is not None:
        keys += settings.api_keys.get_secret_value().split(",")
    if settings.api_keys_file is not None:
        keys += settings.api_keys_file.read_text(encoding="utf-8").splitlines()
    return [k.strip().encode() for k in keys if k.strip() and not k.strip().startswith("#")]


def open_paths(settings: Settings) -> frozenset[str]:
    return OPEN_PATHS if settings.metrics_need_key else OPEN_PATHS | {"/metrics"}


def key_matches(token: bytes, keys: list[bytes]) -> bool:
    # No early exit: the time taken does not depend on which key (if any) matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token, key)
    return matched


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: list[bytes], open_paths: frozenset[str]) -> None:
        self.app, self.keys, self.open_paths = app, keys, open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("authorization")
        challenge = {"WWW-Authenticate": "Bearer"}
        if not header:
            message = "an API key is required: send Authorization: Bearer <key>"
            await send_error(scope, send, "unauthorized", message, headers=challenge)
            return
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await send_error(
                scope, send, "unauthorized", "the Authorization header must be 'Bearer <key>'", headers=challenge
            )
            return
        if not key_matches(token.strip().encode("latin-1"), self.keys):
            await send_error(scope, send, "forbidden", "the API key is not valid")
            return
        await self.app(scope, receive, send)


def document_bearer_auth(openapi_schema: dict[str, Any], open_paths: frozenset[str]) -> dict[str, Any]:
    """Declare the bearer scheme in the OpenAPI document (the /docs 'Authorize' button uses it)."""
    openapi_schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from FLIP_API_KEYS / FLIP_API_KEYS_FILE.",
    }
    for path, operations in openapi_schema.get("paths", {}).items():
        if path in open_paths:
            continue
        for operation in operations.values():
            operation["security"] = [{"bearer": []}]
            for status, what in (("401", "No API key."), ("403", "A wrong API key.")):
                operation.setdefault("responses", {})[status] = {
                    "description": what,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
                }
    return openapi_schema
