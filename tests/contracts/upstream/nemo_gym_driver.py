"""Run in a virtualenv with nemo-gym (Gym 07d6b0d) installed, with the path of
examples/nemo_gym/resources_servers/flip_reward as argv[1]:

1. Gym's own config handling: with NEMO_GYM_EXTRA_ROOTS=examples/nemo_gym, the relative config path
   and server folder a NeMo RL user lists resolve to ours; our yaml's entries are server instances;
   an entry that names a host and port but no entrypoint (an "external" server) is not one.
2. The forwarding server, built by Gym's SimpleResourcesServer, answers /seed_session and /verify
   through Gym's aiohttp client against flip-reward ($FLIP_REWARD_URL).

Reads {"messages", "responses"} as JSON on stdin; prints {"external_error", "results"}."""

import asyncio
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import httpx
from nemo_gym.config_types import maybe_get_server_instance_config
from nemo_gym.openai_utils import NeMoGymResponse
from nemo_gym.server_utils import (
    BaseServerConfig,
    GlobalAIOHTTPAsyncClientConfig,
    ServerClient,
    set_global_aiohttp_client,
)
from omegaconf import OmegaConf

server_dir = Path(sys.argv[1]).resolve()
os.environ["NEMO_GYM_EXTRA_ROOTS"] = str(server_dir.parents[1])
from nemo_gym.cli.env import _resolve_server_dir  # noqa: E402
from nemo_gym.global_config import _resolve_under_cwd_or_install  # noqa: E402

assert _resolve_server_dir(Path("resources_servers/flip_reward")) == server_dir
config_path = _resolve_under_cwd_or_install("resources_servers/flip_reward/configs/flip_reward.yaml")
assert Path(config_path) == server_dir / "configs" / "flip_reward.yaml"
for name, entry in OmegaConf.load(server_dir / "configs" / "flip_reward.yaml").items():
    config, error = maybe_get_server_instance_config(name, entry)
    assert config is not None, error

external = OmegaConf.create(
    {"resources_servers": {"flip_reward": {"host": "127.0.0.1", "port": 8000, "domain": "rlhf"}}}
)
config, external_error = maybe_get_server_instance_config("flip_reward", external)
assert config is None

spec = importlib.util.spec_from_file_location("flip_reward_app", server_dir / "app.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
server = module.FlipRewardServer(
    config=module.FlipRewardConfig(
        name="flip_reward",
        host="127.0.0.1",
        port=0,
        entrypoint="app.py",
        domain="rlhf",
        flip_reward_url=os.environ["FLIP_REWARD_URL"],
    ),
    server_client=ServerClient(
        head_server_config=BaseServerConfig(host="127.0.0.1", port=1), global_config_dict=OmegaConf.create({})
    ),
)
app = server.setup_webserver()


def response_object(text: str) -> dict:
    output = (
        []
        if not text
        else [
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
    )
    raw = {
        "id": "resp_1",
        "object": "response",
        "created_at": time.time(),
        "model": "policy",
        "output": output,
        "parallel_tool_calls": False,
        "tool_choice": "auto",
        "tools": [],
    }
    return NeMoGymResponse.model_validate(raw).model_dump(mode="json")


async def rollout(client: httpx.AsyncClient, row: dict, text: str) -> dict:
    seeded = await client.post("/seed_session", json=row)
    seeded.raise_for_status()
    verified = await client.post("/verify", json=row | {"response": response_object(text)})
    if verified.status_code != 200:
        return {"error": verified.status_code}
    return verified.json()


async def main() -> None:
    given = json.load(sys.stdin)
    set_global_aiohttp_client(cfg=GlobalAIOHTTPAsyncClientConfig())
    row = {"responses_create_params": {"input": given["messages"]}}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gym") as client:
        results = await asyncio.gather(*(rollout(client, row, r) for r in given["responses"]))
    print(json.dumps({"external_error": str(external_error), "results": results}))


asyncio.run(main())
