"""A NeMo Gym resources server that forwards /verify to flip-reward (which answers Gym's shapes).

Why a process of its own: Gym launches every server its config lists and builds their URLs from
`host`/`port`; a server entry needs an `entrypoint` (nemo_gym/config_types.py BaseRunServerConfig),
and an agent may only reference a declared server (global_config.py validate_and_populate_defaults),
so a config cannot name flip-reward's URL directly. This server holds no logic: the row goes to
flip-reward's POST /verify and its reply (the row, `reward`, the flip_* numbers) comes back as is.

A 429/502/503/504 from flip-reward is retried here (Retry-After honoured, 5 tries); any other
failure fails this /verify, so Gym's agent fails the rollout's /run and NeMo RL retries the prompt:
never a reward of 0 in place of a score.
"""

import asyncio

from nemo_gym.base_resources_server import BaseResourcesServerConfig, BaseVerifyRequest, SimpleResourcesServer
from nemo_gym.server_utils import get_response_json, raise_for_status, request

RETRY_STATUSES = {429, 502, 503, 504}


class FlipRewardConfig(BaseResourcesServerConfig):
    flip_reward_url: str = "http://127.0.0.1:8000"
    flip_reward_api_key: str | None = None
    max_tries: int = 5


class FlipRewardServer(SimpleResourcesServer):
    config: FlipRewardConfig

    async def verify(self, body: BaseVerifyRequest) -> dict:
        key = self.config.flip_reward_api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        url = self.config.flip_reward_url.rstrip("/") + "/verify"
        for attempt in range(self.config.max_tries):
            response = await request("POST", url, json=body.model_dump(mode="json"), headers=headers)
            if response.status not in RETRY_STATUSES or attempt + 1 == self.config.max_tries:
                break
            response.release()  # hand the connection back before the retry
            await asyncio.sleep(min(float(response.headers.get("Retry-After") or 2**attempt), 30.0))
        await raise_for_status(response)
        return await get_response_json(response)


if __name__ == "__main__":
    FlipRewardServer.run_webserver()
