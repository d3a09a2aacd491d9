"""Reward parity across machines: the same items, the same weights, each method, on this machine and
on another (a GPU box against a CPU one). The GPU kit's parity step (scripts/gpu_smoke.sh).

    python bench/parity.py run --model DIR --out gpu.json [--reference cpu.json]   # start, score, stop
    python bench/parity.py score --url http://127.0.0.1:8000 --out FILE           # a running service
    python bench/parity.py compare REFERENCE CANDIDATE                             # table; exit 1 if over

The model: any folder both machines have; with no hub, a seeded random-weight one from
scripts/make_random_model.py (same seed, same weights). bench/parity/ holds the CPU reference for the
built-in shape at seed 0, made with `python bench/parity.py run --model /tmp/rand --out ...` after
`python scripts/make_random_model.py /tmp/rand`.

What must agree, and how closely. bfloat16 (the GPU's dtype) keeps 8 bits of mantissa: logits and
logprobs differ from float32 by ~1e-2 relative, and more where a sum of many terms cancels. So:
- likelihood: every item scored (a finite reward where the reference has one, the same unscorable
  floor and item codes); the mean instruction logprob (`conditional`) within 5 % relative; the reward
  within 0.05. Items whose reward is a clear call (>= 0.1 from 0.5) on both keep their side.
- generate and judge decode greedily: one flipped argmax early on changes the whole text, and with
  random weights most positions are near ties (the judge then finds no score: `judge_no_score`).
  Held to the same unscorable floors only; their rewards and codes are printed side by side.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("likelihood", "generate", "judge")
LIKELIHOOD_REWARD_TOLERANCE = 0.05
LIKELIHOOD_LOGPROB_RELATIVE_TOLERANCE = 0.05

# Short and long responses, an honest and an off-topic answer, an empty one (the floor).
ITEMS = [
    ("Give me three tips for staying focused while studying.",
     "1. Put your phone in another room. 2. Work in 25-minute blocks. 3. Write down one goal per session."),
    ("Explain why the sky is blue.",
     "Sunlight is made of many colours. Gas molecules in the air are much smaller than the wavelength of "
     "light and scatter short wavelengths far more than long ones (Rayleigh scattering). Blue light is "
     "scattered across the whole sky, so wherever we look away from the sun we see blue."),
    ("Write a haiku about autumn rain.", "Cold rain on the roof / the maple lets go its leaves / puddles full of red"),
    ("Translate 'good morning' into French.", "Bonjour."),
    ("Summarize the causes of the First World War.",
     "The war grew out of a web of alliances, an arms race between the great powers, imperial rivalry over "
     "colonies and markets, and nationalism in the Balkans. The assassination of Archduke Franz Ferdinand in "
     "Sarajevo in June 1914 set the alliances in motion: Austria-Hungary declared war on Serbia, Russia "
     "mobilised, Germany declared war on Russia and France, and Britain entered when Belgium was invaded."),
    ("Give me a recipe for pancakes.", "The capital of Australia is Canberra, not Sydney."),
    ("What is 17 times 23?", "17 times 23 is 391."),
    ("Write a limerick about a cat.", ""),
]  # fmt: skip


def score(url: str, api_key: str | None = None) -> dict[str, Any]:
    """Every item by every method through /batch_reward (details on), as the service answers."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    out: dict[str, Any] = {"url": url, "methods": {}}
    with httpx.Client(base_url=url, timeout=600, headers=headers) as client:
        info = client.get("/info").json()
        out["model"], out["runtime"] = (
            info.get("model"),
            (info.get("throughput") or {}).get("engine", {}).get("runtime"),
        )
        for method in METHODS:
            body = {
                "items": [{"prompt": p, "response": r} for p, r in ITEMS],
                "method": method,
                "details": True,
            }
            reply = client.post("/batch_reward", json=body)
            reply.raise_for_status()
            out["methods"][method] = [
                {
                    "reward": r.get("reward"),
                    "code": r.get("code"),
                    "error": r.get("error"),
                    "unscorable": r.get("unscorable"),
                    "conditional": (r.get("likelihood") or {}).get("conditional"),
                    "contrast": (r.get("likelihood") or {}).get("contrast"),
                }
                for r in reply.json()["results"]
            ]
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def compare(reference: dict[str, Any], candidate: dict[str, Any]) -> tuple[list[list[str]], list[str]]:
    """Table rows and the failures (empty: parity holds)."""
    rows, failures = [], []
    weights = reference.get("weights_sha256"), candidate.get("weights_sha256")
    if None not in weights and weights[0] != weights[1]:
        failures.append(f"the weights differ ({weights[0][:12]} vs {weights[1][:12]}): no parity to measure")
    for method in METHODS:
        for k, (a, b) in enumerate(zip(reference["methods"][method], candidate["methods"][method])):
            row = [method, str(k), _fmt(a["reward"]), _fmt(b["reward"]), _fmt(a["conditional"]), _fmt(b["conditional"])]
            problem = None
            if method == "likelihood" and _finite(a["reward"]) and not _finite(b["reward"]):
                problem = f"no reward ({b['code']}: {b['error']})"
            elif a["unscorable"] != b["unscorable"]:
                problem = f"unscorable {a['unscorable']} vs {b['unscorable']}"
            elif method == "likelihood" and a["code"] != b["code"]:
                problem = f"item error {a['code']} vs {b['code']}"
            elif method == "likelihood" and _finite(a["reward"]):
                if abs(a["reward"] - b["reward"]) > LIKELIHOOD_REWARD_TOLERANCE:
                    problem = f"reward differs by {abs(a['reward'] - b['reward']):.3f}"
                elif _finite(a["conditional"]) and abs(a["conditional"] - b["conditional"]) > (
                    LIKELIHOOD_LOGPROB_RELATIVE_TOLERANCE * abs(a["conditional"])
                ):
                    problem = f"logprob differs by {abs(a['conditional'] - b['conditional']):.3f}"
                elif abs(a["reward"] - 0.5) >= 0.1 and (a["reward"] > 0.5) != (b["reward"] > 0.5):
                    problem = "a clear call changed side"
            rows.append([*row, problem or "ok"])
            if problem:
                failures.append(f"{method} item {k}: {problem}")
    return rows, failures


def _fmt(x: Any) -> str:
    return f"{x:.4f}" if _finite(x) else str(x)


def print_table(rows: list[list[str]]) -> None:
    header = ["method", "item", "reward ref", "reward here", "logprob ref", "logprob here", "verdict"]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def run(model: str, extra_env: dict[str, str]) -> dict[str, Any]:
    """Start the service on `model`, score, stop."""
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "FLIP_MODEL": model, **extra_env}
    log = open(ROOT / "bench" / "results" / "parity-server.log", "w")  # noqa: SIM115  # open for the process's life
    process = subprocess.Popen(
        [sys.executable, "-m", "flip_reward.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 900
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the service exited ({process.returncode}); see bench/results/parity-server.log")
            try:
                if httpx.get(url + "/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the service was not ready in 900 s; see bench/results/parity-server.log")
            time.sleep(1)
        result = score(url)
        digest = Path(model) / "flip-weights.sha256"  # written by scripts/make_random_model.py
        result["weights_sha256"] = digest.read_text().strip() if digest.exists() else None
        return result
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="start the service on --model, score every method, stop")
    p_run.add_argument("--model", required=True)
    p_run.add_argument("--out", type=Path, required=True)
    p_run.add_argument("--reference", type=Path, help="compare with this file afterwards")
    p_score = sub.add_parser("score", help="score a running service")
    p_score.add_argument("--url", required=True)
    p_score.add_argument("--out", type=Path, required=True)
    p_cmp = sub.add_parser("compare", help="compare two score files")
    p_cmp.add_argument("reference", type=Path)
    p_cmp.add_argument("candidate", type=Path)
    args = parser.parse_args()

    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    if args.command in ("run", "score"):
        result = run(args.model, {}) if args.command == "run" else score(args.url, os.environ.get("FLIP_API_KEY"))
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"scores: {args.out} (model {result['model']}, runtime {result['runtime']})")
        reference = getattr(args, "reference", None)
        if reference is None:
            return
        candidate_path = args.out
    else:
        reference, candidate_path = args.reference, args.candidate
    rows, failures = compare(json.loads(reference.read_text()), json.loads(candidate_path.read_text()))
    print_table(rows)
    for failure in failures:
        print("FAIL:", failure)
    print(f"parity: {'FAILED' if failures else 'ok'} ({len(rows)} rewards, {len(failures)} over tolerance)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
