"""The new adapters through the real upstream code, where the package installs on a CPU machine
without a GPU stack: verifiers (Task.score with the reward plugged by import path), skyrl-gym
(register, skyrl_gym.make, init/step on a thread pool) and NeMo Gym (its config validation and
the forwarding resources server, built and called by Gym's own classes), and AReaL's
AsyncRewardWrapper (its package needs a GPU stack: the driver imports only the reward path from a
source tree, $FLIP_UPSTREAM_AREAL_SRC, else /tmp/up-areal).

Each runs tests/contracts/upstream/<stack>_driver.py in a scratch virtualenv of its own (the
packages are not flip-reward's dependencies), e.g.

    python3.11 -m venv /tmp/scratch-verifiers && /tmp/scratch-verifiers/bin/pip install <verifiers checkout> httpx
    python3.11 -m venv /tmp/scratch-skyrl && /tmp/scratch-skyrl/bin/pip install <SkyRL checkout>/skyrl-gym httpx
    python3.13 -m venv /tmp/scratch-nemo_gym && /tmp/scratch-nemo_gym/bin/pip install <Gym checkout> httpx
    python3.11 -m venv /tmp/scratch-areal && /tmp/scratch-areal/bin/pip install colorlog httpx

(Gym declares Python >= 3.13.14; 3.13.0 with --ignore-requires-python ran it here.) The python is
$FLIP_UPSTREAM_<STACK>_PYTHON, else /tmp/scratch-<stack>/bin/python; without one the test skips.
Checked at verifiers a60a606, SkyRL a956457, Gym 07d6b0d, AReaL 4aef98d.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.contracts.conftest import GROUP, INSTRUCTION, UNSCORABLE, batch_rewards

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = Path(__file__).resolve().parent / "upstream"
MESSAGES = [{"role": "system", "content": "Be helpful."}, {"role": "user", "content": INSTRUCTION}]


def upstream_python(stack: str) -> str:
    python = os.environ.get(f"FLIP_UPSTREAM_{stack.upper()}_PYTHON") or f"/tmp/scratch-{stack}/bin/python"
    if not Path(python).exists():
        pytest.skip(f"no virtualenv with {stack} installed (set FLIP_UPSTREAM_{stack.upper()}_PYTHON)")
    return python


def drive(stack: str, url: str, given: dict, *args: str) -> object:
    done = subprocess.run(
        [upstream_python(stack), str(DRIVERS / f"{stack}_driver.py"), *args],
        input=json.dumps(given),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "FLIP_REWARD_URL": url},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def upstream_areal_source() -> Path:
    source = Path(os.environ.get("FLIP_UPSTREAM_AREAL_SRC") or "/tmp/up-areal")
    if not (source / "areal" / "api" / "reward_api.py").exists():
        pytest.skip("no AReaL source tree (set FLIP_UPSTREAM_AREAL_SRC)")
    return source


def upstream_driver_input(stack: str, messages: list[dict], responses: list[str]) -> dict:
    """What each driver reads: the conversation and the responses, in its stack's form (SkyRL and
    AReaL decode the generation with its EOS token)."""
    if stack == "verifiers":
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        return {"instruction": messages[-1]["content"], "system": system, "responses": responses}
    if stack == "areal":
        prompt = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        eos = [r + "<|im_end|>" for r in responses]
        return {"prompt": prompt + "<|im_start|>assistant\n", "messages": messages, "responses": eos}
    if stack == "skyrl":
        return {"messages": messages, "responses": [r + "<|im_end|>" for r in responses]}
    return {"messages": messages, "responses": responses}


def results_rewards(stack: str, got) -> list[float]:
    if stack == "nemo_gym":
        return [r["reward"] for r in got["results"]]
    if stack == "areal":
        return got["rewards"]
    return [r["reward"] for r in got]


@pytest.fixture(scope="module")
def expected(live):
    return batch_rewards(live, [{"messages": MESSAGES, "response": r} for r in GROUP])


def assert_floor_flags(metrics: list[dict]) -> None:
    assert [m["flip_unscorable"] for m in metrics] == [float(i in UNSCORABLE) for i in range(len(GROUP))]
    assert len({frozenset(m) for m in metrics}) == 1


def test_verifiers_task_score_with_the_reward_plugged_by_import_path(live, expected):
    results = drive("verifiers", live.url, {"instruction": INSTRUCTION, "system": "Be helpful.", "responses": GROUP})
    assert [r["reward"] for r in results] == pytest.approx(expected, abs=1e-6)
    assert all(r["rewards"] == ["flip"] for r in results)
    assert_floor_flags([r["metrics"] for r in results])


def test_verifiers_task_score_raises_when_the_service_cannot_score(unavailable_url):
    # after the client's retries: Task.score raises TaskError, the rollout fails (no 0.0)
    given = {"instruction": INSTRUCTION, "system": "", "responses": [GROUP[0]]}
    (result,) = drive("verifiers", unavailable_url, given)
    assert result["error"].startswith("TaskError") and "reward" not in result


def test_skyrl_gym_makes_and_steps_the_registered_env(live, expected):
    given = {"messages": MESSAGES, "responses": [r + "<|im_end|>" for r in GROUP]}
    results = drive("skyrl", live.url, given)
    assert [r["reward"] for r in results] == pytest.approx(expected, abs=1e-6)
    assert all(r["done"] for r in results)
    assert_floor_flags([r["metrics"] for r in results])


def test_nemo_gym_forwarding_server_and_config(live, expected):
    server_dir = ROOT / "examples" / "nemo_gym" / "resources_servers" / "flip_reward"
    given = {"messages": MESSAGES, "responses": GROUP}
    got = drive("nemo_gym", live.url, given, str(server_dir))
    assert "entrypoint" in got["external_error"]  # Gym cannot declare a server it does not launch
    results = got["results"]
    assert [r["reward"] for r in results] == pytest.approx(expected, abs=1e-6)
    assert [results[i]["flip_unscorable_reason"] for i in UNSCORABLE] == list(UNSCORABLE.values())
    assert_floor_flags(results)


def test_areal_async_reward_wrapper_runs_the_reward_fn_by_its_path(live, expected):
    got = drive("areal", live.url, upstream_driver_input("areal", MESSAGES, GROUP), str(upstream_areal_source()))
    assert results_rewards("areal", got) == pytest.approx(expected, abs=1e-6)


def test_areal_a_failing_service_raises_through_the_wrapper_never_0(unavailable_url):
    given = upstream_driver_input("areal", MESSAGES, [GROUP[0]])
    got = drive("areal", unavailable_url, given, str(upstream_areal_source()))
    assert "HTTP 503" in got["error"] and "rewards" not in got  # retried 3 times by AReaL, then raised
