"""OpenRLHF with FLIP as a remote reward model, against the local service.

Launch OpenRLHF (v0.10.2 and later: dotted flags; checked against OpenRLHF 3c3be62, v0.11) with the
service as its reward model:

    python -m openrlhf.cli.train_ppo_ray ... --reward.remote_url http://127.0.0.1:8000/get_reward
    # the instruction in a dataset column instead of the prompt:  --data.label_key instruction
    #   --reward.remote_url 'http://127.0.0.1:8000/get_reward?instruction_from=label'
    # OpenRLHF before v0.10.2: --remote_rm_url ... and --label_key ...

Every query gets a number: an EOS-only response (or one cut off inside <think>) gets the floor
reward with `unscorable` saying why, and `extra_logs` holds only finite numbers with the same keys
for every query, which OpenRLHF turns into tensors. A query the service cannot score fails the
request (503/504/429), which OpenRLHF retries (5 tries, 1 s apart).

This script posts exactly what OpenRLHF posts: `query` = prompt + response decoded as one
string with the chat template's tokens (here SmolLM2's ChatML template), once per sample (as
OpenRLHF's single-turn executor does) and as one batch (as older versions do).

    .venv/bin/python examples/openrlhf_remote_rm.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples._common import URL, selfinstruct

TEMPLATE = (
    "<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def main() -> None:
    rows = selfinstruct(3)
    prompts = [TEMPLATE.format(r["instruction"]) for r in rows]
    queries = [p + r["response"] + "<|im_end|>" for p, r in zip(prompts, rows)]
    with httpx.Client(timeout=300) as http:
        print(f"OpenRLHF flag: --reward.remote_url {URL}/get_reward   (before v0.10.2: --remote_rm_url)\n")
        for prompt, query in zip(prompts, queries):  # one sample per request
            body = http.post(f"{URL}/get_reward", json={"query": [query], "prompts": [prompt], "labels": [None]})
            body.raise_for_status()
            result = body.json()
            print(f"single: rewards={result['rewards']} inferred={result['inferred_instructions'][0]!r}")
        batch = http.post(f"{URL}/get_reward", json={"query": queries, "prompts": prompts, "labels": [None] * 3})
        batch.raise_for_status()
        print("\nbatch:", json.dumps({k: batch.json()[k] for k in ("rewards", "scores", "extra_logs")}, indent=1))
        empty = http.post(f"{URL}/get_reward", json={"query": [prompts[0] + "<|im_end|>"], "prompts": [prompts[0]]})
        empty.raise_for_status()
        print("\nEOS-only response:", {k: empty.json()[k] for k in ("rewards", "unscorable")})


if __name__ == "__main__":
    main()
