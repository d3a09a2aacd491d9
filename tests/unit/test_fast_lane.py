"""FastLane (flip_reward/api/json_route.py) serves JSON POSTs to /reward and /batch_reward past
Starlette's and FastAPI's per-request machinery: each answer must be the one FastAPI's own route
would give, and the lane must really be the path taken (a request FastAPI handled carries its exit
stacks in the scope; one the lane served does not)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request, Response
from fastapi.testclient import TestClient
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from flip_reward.api.errors import ApiError, install_error_handlers
from flip_reward.api.json_route import FastLane, JsonBodyRoute, _read_body
from flip_reward.main import RequestContextMiddleware
from tests.unit.test_api import ITEM


class Body(BaseModel):
    name: str
    n: int = 1


def lane_app() -> FastAPI:
    from fastapi import APIRouter

    router = APIRouter(route_class=JsonBodyRoute)

    @router.post("/echo")
    async def echo(body: Body, request: Request) -> Response:
        if body.name == "refuse":
            raise ApiError("queue_full", "server busy", headers={"Retry-After": "1"})
        if body.name == "crash":
            raise RuntimeError("a bug")
        by_fastapi = "fastapi_middleware_astack" in request.scope
        return Response(f'{{"name": "{body.name}", "n": {body.n}, "by_fastapi": {str(by_fastapi).lower()}}}')

    app = FastAPI()
    app.add_middleware(FastLane, fastapi_app=app)
    app.add_middleware(RequestContextMiddleware)
    install_error_handlers(app)
    app.include_router(router)
    return app


@pytest.fixture
def http():
    with TestClient(lane_app(), raise_server_exceptions=False) as client:
        yield client


def test_a_json_post_is_served_by_the_lane(http):
    answer = http.post("/echo", json={"name": "a", "n": 3})
    assert answer.status_code == 200 and answer.json() == {"name": "a", "n": 3, "by_fastapi": False}
    assert answer.headers["x-request-id"]  # the middlewares outside the lane still run


async def test_a_body_in_several_messages_is_read_whole_and_a_disconnect_ends_it():
    def receiver(*messages: dict):
        queue = list(messages)

        async def receive() -> dict:
            return queue.pop(0)

        return receive

    chunked = receiver(
        {"type": "http.request", "body": b'{"name": ', "more_body": True},
        {"type": "http.request", "body": b'"chunked"}', "more_body": False},
    )
    assert await _read_body(chunked) == b'{"name": "chunked"}'
    gone = receiver({"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"})
    with pytest.raises(ClientDisconnect):
        await _read_body(gone)


def test_another_content_type_goes_through_fastapi(http):
    answer = http.post("/echo", content=b'{"name": "a"}', headers={"content-type": "text/plain"})
    plain = answer.json()
    assert answer.status_code == 422 and plain["error"]["type"] == "validation_error"  # FastAPI's own rule


def test_an_invalid_body_gets_fastapis_exact_error(http):
    for payload, field in (({"name": 5}, "name"), ({}, "name"), ({"name": "a", "n": "x"}, "n")):
        answer = http.post("/echo", json=payload)
        assert answer.status_code == 422 and answer.json()["error"]["field"] == field
    broken = http.post("/echo", content=b'{"name": ', headers={"content-type": "application/json"})
    assert broken.status_code == 422 and broken.json()["error"]["type"] == "validation_error"


def test_an_error_the_endpoint_raises_gets_the_applications_handler(http):
    refused = http.post("/echo", json={"name": "refuse"})
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "queue_full"
    crashed = http.post("/echo", json={"name": "crash"})
    assert crashed.status_code == 500 and crashed.json()["error"]["type"] == "internal_error"
    assert crashed.json()["error"]["request_id"] == crashed.headers["x-request-id"]


def test_other_methods_and_paths_pass_by(http):
    assert http.get("/echo").status_code == 405
    assert http.post("/elsewhere", json={"name": "a"}).status_code == 404


def test_the_service_routes_answer_alike_through_the_lane(client):
    # the real app, served by the lane: the same answers, still documented by FastAPI
    body = client.post("/reward", json=ITEM).json()
    assert 0.0 <= body["reward"] <= 1.0 and body["model"] and body["prompt_version"]
    batch = client.post("/batch_reward", json={"items": [ITEM, ITEM]}).json()
    assert batch["rewards"] == [body["reward"]] * 2
    schema = client.get("/openapi.json").json()
    assert "RewardRequest" in schema["components"]["schemas"]


def test_a_route_whose_endpoint_takes_more_is_refused():
    async def endpoint(body: Body, request: Request, extra: int) -> Response:
        return Response()

    with pytest.raises(TypeError, match="extra"):
        JsonBodyRoute("/x", endpoint, methods=["POST"])
