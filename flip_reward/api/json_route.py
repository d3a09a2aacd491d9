"""The hot scoring endpoints (/reward, /batch_reward) without FastAPI's and Starlette's per-request
machinery, which a batch pays once for all its items and a single request once per item.

- `JsonBodyRoute`: an APIRoute whose endpoint takes a pydantic body and the Request, nothing else.
- `FastLane`: an ASGI middleware, innermost of ours (after the request id, the key check and the body
  limits), that serves a JSON POST to such a route's path itself: the body is validated by pydantic
  straight from the bytes (`model_validate_json`) and the endpoint called with it, past Starlette's
  router, its exception middleware, FastAPI's dependency solving, `json.loads`, second validation
  pass and per-request exit stacks. An exception is answered by the application's own handler for
  it, as Starlette's exception middleware would.

Together they took the front's own CPU for a /reward with nothing to score from 0.18 to 0.13 ms
(bench/front_floor.py). What the routes document (OpenAPI, the request model, the error answers)
is FastAPI's as for any APIRoute: the endpoint's signature is the same. Anything the lane does not
take as it is (another content type, a body that does not validate) goes on through FastAPI's own
stack, the body given again, so every validation error keeps FastAPI's exact answer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

JSON_TYPES = (b"application/json", b"application/json; charset=utf-8")


class JsonBodyRoute(APIRoute):
    """An APIRoute for `async def f(body: SomeModel, request: Request) -> Response`: FastLane serves
    it; FastAPI's own handling stays for documentation and for what the lane hands back."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.body_param, self.body_model, self.request_param = _body_and_request(endpoint)


class FastLane:
    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self._routes: dict[str, JsonBodyRoute] | None = None  # by path, once the routers are included

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._routes is None:
            self._routes = {r.path: r for r in self.fastapi_app.routes if isinstance(r, JsonBodyRoute)}
        route = self._routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None or _content_type(scope) not in JSON_TYPES:
            await self.app(scope, receive, send)
            return
        scope.update(route=route, endpoint=route.endpoint, path_params={})  # as the router sets them
        request = Request(scope, receive, send)
        try:
            raw = await _read_body(receive)
            try:
                body = route.body_model.model_validate_json(raw)
            except ValidationError:
                # FastAPI's own handler names the problem exactly as on every other route.
                await self.app(scope, _replay(raw, receive), send)
                return
            response = await route.endpoint(**{route.body_param: body, route.request_param: request})
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise  # as from Starlette's stack: the request-context middleware answers 500
            response = await handler(request, exc)
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> Any:
        """The application's handler for this exception, by class, as Starlette's exception
        middleware finds it (the handler for Exception itself is the server-error one: not here)."""
        handlers = self.fastapi_app.exception_handlers
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            if cls in handlers:
                return handlers[cls]
        return None


async def _read_body(receive: Receive) -> bytes:
    """The request body, as Request.body() reads it, without its async generator per request."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` with the body, already read, given again first."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _content_type(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.lower()
    return b""


def _body_and_request(endpoint: Callable[..., Any]) -> tuple[str, type[BaseModel], str]:
    """The endpoint's body parameter (a pydantic model) and its Request parameter, by annotation;
    anything else in the signature would be skipped by the fast path, so it is refused here."""
    body: tuple[str, type[BaseModel]] | None = None
    request_name = None
    hints = inspect.get_annotations(endpoint, eval_str=True)
    for name in inspect.signature(endpoint).parameters:
        annotation = hints.get(name)
        if annotation is Request:
            request_name = name
        elif inspect.isclass(annotation) and issubclass(annotation, BaseModel) and body is None:
            body = (name, annotation)
        else:
            raise TypeError(f"{endpoint.__name__}: JsonBodyRoute takes (body: Model, request: Request), not {name!r}")
    if body is None or request_name is None:
        raise TypeError(f"{endpoint.__name__}: JsonBodyRoute needs a pydantic body and a Request parameter")
    return body[0], body[1], request_name
