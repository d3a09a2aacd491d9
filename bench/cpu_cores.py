"""Engine speed on the CPU backend with vLLM's default core reservation and with none.

    .venv/bin/python bench/cpu_cores.py [--prompts 48]

vLLM-CPU keeps `VLLM_CPU_NUM_OF_RESERVED_CPU` cores (default 1) off its OpenMP compute threads.
On a 2-core machine that is half the compute. Each setting runs in a fresh subprocess (the
variable is read when the engine starts) on the same real Auto-J responses, prefix cache off:
prefill only, prefill with prompt logprobs (the likelihood method), and 32 decoded tokens
(the generate method). Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
EVAL = ROOT.parent / "shared" / "eval" / "autoj_pairwise.jsonl"
SAMPLE = ROOT / "data" / "samples" / "autoj_pairwise_64.jsonl"


def measure(n: int) -> dict:
    from vllm import LLM, SamplingParams

    from flip_reward.config import Settings
    from flip_reward.engines.vllm_local import resolve_dtype
    from flip_reward.models import resolve_llm

    settings = Settings()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.cpu_kv_cache_gib))
    llm = LLM(
        model=resolve_llm(settings.model, settings.cache_dir),
        dtype=resolve_dtype(settings.dtype),
        max_model_len=settings.max_model_len,
        enforce_eager=True,
        enable_prefix_caching=False,
    )
    path = EVAL if EVAL.exists() else SAMPLE
    prompts = [json.loads(line)["chosen"][:1800] for line in path.read_text().splitlines()[:n]]
    llm.generate(prompts[:2], SamplingParams(max_tokens=1), use_tqdm=False)  # warm-up
    out = {}
    for name, params in (
        ("prefill", SamplingParams(max_tokens=1)),
        ("prefill + prompt logprobs", SamplingParams(max_tokens=1, prompt_logprobs=0)),
        ("prefill + 32 decoded", SamplingParams(max_tokens=32, ignore_eos=True)),
    ):
        started = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - started
        tokens = sum(len(o.prompt_token_ids) for o in outputs)
        out[name] = {
            "prompts": len(prompts),
            "prompt_tokens": tokens,
            "seconds": seconds,
            "prompt_tokens_per_s": tokens / seconds,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(args.prompts)), flush=True)
        return
    results = {}
    for reserved in ("1", "0"):
        env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": reserved}
        proc = subprocess.run(
            [sys.executable, __file__, "--child", "--prompts", str(args.prompts)],
            env=env,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(f"reserved={reserved} failed:\n{proc.stderr[-3000:]}")
        results[f"reserved_{reserved}"] = json.loads(line[len("RESULT ") :])
    header = f"{'phase':<28}{'reserved 1 tok/s':>18}{'reserved 0 tok/s':>18}{'ratio':>8}"
    lines = [header, "-" * len(header)]
    for phase in results["reserved_1"]:
        a = results["reserved_1"][phase]["prompt_tokens_per_s"]
        b = results["reserved_0"][phase]["prompt_tokens_per_s"]
        lines.append(f"{phase:<28}{a:>18.0f}{b:>18.0f}{b / a:>8.2f}")
    table = "\n".join(lines)
    print(f"{os.cpu_count()} CPUs, {args.prompts} prompts\n{table}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"cpu_cores-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
    }
    out.write_text(json.dumps({"meta": meta, "results": results, "table": table}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
