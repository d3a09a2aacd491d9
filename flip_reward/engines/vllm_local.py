"""The in-process vLLM engine (AsyncLLM): every concurrent request shares its continuous batching."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from typing import Any

from flip_reward import metrics
from flip_reward.config import Settings
from flip_reward.engines.base import Engine, EngineUnavailable, Generation, GenerationParams, prefix_cache_stats
from flip_reward.engines.prompt_logprobs import UnreadablePromptLogprobs, align_prompt_logprobs, local_logprob

log = logging.getLogger(__name__)


def resolve_dtype(dtype: str) -> str:
    """`auto` means float32 on the CPU backend. vLLM-CPU would otherwise run bfloat16, whose
    rounding depends on the batch: the same item then gets a different greedy reconstruction (and
    reward) depending on what it was batched with (measured: 9 of 16 items identical alone and in
    a batch of 32 under bfloat16, 16 of 16 under float32). On a GPU `auto` is the model's dtype."""
    if dtype != "auto":
        return dtype
    import torch

    return "auto" if torch.cuda.is_available() else "float32"


def resolve_enforce_eager(enforce_eager: bool | None, on_cpu: bool) -> bool:
    """Unset means eager on the CPU backend (no CUDA graphs there; compiling only slows the start)
    and CUDA graphs on a GPU, where they speed up every decode step."""
    return on_cpu if enforce_eager is None else enforce_eager


class EngineStepStats:
    """Fed by a stat logger on every engine step from vLLM's scheduler stats: how many requests ran
    together (the engine's batch size, into the metric) and how the prefix cache did (totals)."""

    def __init__(self) -> None:
        self.prefix_cache_queries = 0  # prompt tokens looked up
        self.prefix_cache_hits = 0  # prompt tokens found, not computed again

    def stat_logger_factory(self) -> Any:
        from vllm.v1.metrics.loggers import StatLoggerBase

        totals = self

        class FlipStatLogger(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0) -> None:
                if scheduler_stats is None:
                    return
                if scheduler_stats.num_running_reqs:
                    metrics.ENGINE_BATCH_SIZE.observe(scheduler_stats.num_running_reqs)
                prefix = scheduler_stats.prefix_cache_stats
                if prefix is not None:
                    totals.prefix_cache_queries += prefix.queries
                    totals.prefix_cache_hits += prefix.hits

            def log_engine_initialized(self) -> None:
                pass

        return FlipStatLogger


def prompt_logprob_params(read_cache: bool) -> Any:
    """One prefill, one throw-away output token; prompt_logprobs=0 returns the logprob of the actual
    prompt token at every position (not detokenized: unused, and slow). vLLM skips its prefix cache
    for such requests unless told otherwise: reading it lets a response scored against several
    instructions be prefilled once."""
    from vllm import SamplingParams

    return SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False, skip_reading_prefix_cache=not read_cache)


def read_prompt_logprobs(out: Any) -> list[float | None]:
    """Each prompt token's logprob from a RequestOutput, None where the engine computed none (the
    first position, and those served from the prefix cache), whichever runner laid the list out
    (flip_reward/engines/prompt_logprobs.py). UnreadablePromptLogprobs where it cannot be aligned."""
    return align_prompt_logprobs(out.prompt_token_ids, out.prompt_logprobs, out.num_cached_tokens or 0, local_logprob)


def cache_reached(out: Any, scored_from: int) -> bool:
    """The prefix cache served a position from `scored_from` on (a repeated prompt), which then has
    no logprob: the request must run again without the cache. `num_cached_tokens` is set by the
    scheduler at the request's first scheduling (vllm/v1/core/sched/scheduler.py), in the engine
    core, the same on every platform and runner."""
    return (out.num_cached_tokens or 0) >= scored_from


def check_block_size(block_size: int, on_cpu: bool) -> None:
    """vLLM's CPU attention takes only multiples of 32 and otherwise fails deep in a worker process
    ("No common block size for 16"); say which setting to change before starting it."""
    if on_cpu and block_size % 32:
        raise ValueError(
            f"FLIP_KV_BLOCK_SIZE={block_size}: vLLM's CPU backend needs a multiple of 32 (16 works on GPUs only)"
        )


def runtime_info(vllm_config: Any, platform: Any) -> dict[str, Any]:
    """What of vLLM's set-up changes the shape of its outputs or its speed, for /info and the start
    log: the model runner (V2 is CUDA's default from vLLM 0.26 on: `VllmConfig.use_v2_model_runner`
    in vllm/config/vllm.py; vLLM-CPU runs V1), the attention backend asked for (None: vLLM picks per
    platform, and its engine log names the one it picked) and whether CUDA graphs are on."""
    import vllm

    compilation = vllm_config.compilation_config
    mode = getattr(compilation.cudagraph_mode, "name", str(compilation.cudagraph_mode))
    backend = vllm_config.attention_config.backend
    return {
        "vllm_version": vllm.__version__,
        "platform": platform.device_type,
        "model_runner": "V2" if vllm_config.use_v2_model_runner else "V1",
        "attention_backend": getattr(backend, "name", backend) or "auto",
        "cuda_graphs": not vllm_config.model_config.enforce_eager and mode not in ("NONE", "None"),
        "cudagraph_mode": mode,
    }


class VLLMEngine(Engine):
    label = "the vLLM engine"
    # prompt_logprobs(scored_from=k) computes only the positions from k on when the ones before it are
    # in the prefix cache: the likelihood method prefills the response without logprobs first.
    scores_from_prefix_cache = True

    def __init__(
        self, llm: Any, model_name: str, max_model_len: int, step_stats: EngineStepStats | None = None
    ) -> None:
        super().__init__()
        self._llm = llm
        self.step_stats = step_stats or EngineStepStats()
        self.model_name = model_name
        self.max_model_len = max_model_len
        self._tokenizer = llm.get_tokenizer()
        self._ids = itertools.count()
        self.runtime: dict[str, Any] = {}  # runtime_info(), set by start()

    @classmethod
    def start(cls, model_path: str, settings: Settings, model_name: str | None = None) -> VLLMEngine:
        # The CPU backend sizes its KV cache from this variable; it is ignored on GPUs.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.cpu_kv_cache_gib))
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(settings.cpu_reserved_cores))
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        on_cpu = current_platform.is_cpu()
        if not on_cpu:
            # The engine core runs in a child process. Forked after CUDA is initialised (the embedder
            # loads on the GPU in a thread beside this one), the child's CUDA fails; spawn is safe.
            os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        check_block_size(settings.kv_block_size, on_cpu)
        args = AsyncEngineArgs(
            model=model_path,
            served_model_name=model_name,
            max_model_len=settings.max_model_len,
            dtype=resolve_dtype(settings.dtype),  # type: ignore[arg-type]  # one of Settings.dtype's choices
            enforce_eager=resolve_enforce_eager(settings.enforce_eager, on_cpu),
            gpu_memory_utilization=settings.gpu_memory_utilization,
            max_num_seqs=settings.max_num_seqs,
            seed=settings.seed,
            enable_prefix_caching=True,  # the system prompt is shared by every request
            block_size=settings.kv_block_size,
        )
        step_stats = EngineStepStats()
        llm = AsyncLLM.from_engine_args(args, stat_loggers=[step_stats.stat_logger_factory()])
        engine = cls(llm, model_name or model_path, settings.max_model_len, step_stats)
        engine.runtime = runtime_info(llm.vllm_config, current_platform)
        log.info("vLLM engine: %s", ", ".join(f"{k} {v}" for k, v in engine.runtime.items()))
        return engine

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def check_available(self) -> None:
        super().check_available()
        if self._llm.errored:
            raise EngineUnavailable("the vLLM engine has stopped")

    async def _consume(self, prompt_token_ids: list[int], sampling_params: Any) -> Any:
        """The raw engine call (run through Engine.supervised): one request streamed to its final
        output, each step noted as progress."""
        from vllm.v1.engine.exceptions import EngineDeadError

        final = None
        try:
            async for out in self._llm.generate(
                {"prompt_token_ids": prompt_token_ids}, sampling_params, request_id=f"flip-{next(self._ids)}"
            ):
                final = out
                self.note_progress()
        except EngineDeadError as exc:
            raise EngineUnavailable("the vLLM engine died during the request") from exc
        except Exception as exc:
            if self._llm.errored:  # e.g. EngineGenerateError raised while the engine goes down
                raise EngineUnavailable("the vLLM engine died during the request") from exc
            raise
        return final

    async def generate(self, prompt_token_ids: list[int], params: GenerationParams) -> Generation:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        sampling = SamplingParams(
            structured_outputs=StructuredOutputsParams(regex=params.regex) if params.regex else None,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            seed=params.seed if params.temperature > 0 else None,
            stop=list(params.stop) or None,
        )
        out = await self.supervised(self._consume, prompt_token_ids, sampling)
        # Platform audit (issue 20): only the text, token count and finish reason are read, which the
        # output processor builds the same way for every runner (vllm/v1/engine/output_processor.py);
        # no generation logprobs are asked for. The sampler differs (V2: vllm/v1/worker/gpu/sample/
        # sampler.py) but greedy is argmax on both; bf16 on a GPU may break near-ties otherwise.
        # The regex goes to vLLM's structured-output manager (vllm/v1/structured_output/, xgrammar by
        # default on CPU and CUDA alike); the runner only applies its bitmask.
        completion = out.outputs[0]
        return Generation(
            text=completion.text,
            prompt_tokens=len(prompt_token_ids),
            completion_tokens=len(completion.token_ids),
            finish_reason=completion.finish_reason,
        )

    async def prompt_logprobs(self, prompt_token_ids: list[int], scored_from: int = 0) -> list[float | None]:
        if scored_from > 1:  # only a tail is scored: read the prefix cache for the rest
            out = await self.supervised(self._consume, prompt_token_ids, prompt_logprob_params(read_cache=True))
            if not cache_reached(out, scored_from):
                try:
                    return read_prompt_logprobs(out)
                except UnreadablePromptLogprobs as exc:
                    log.info("prompt logprobs read from the cache were unreadable (%s); once more without it", exc)
        # Every position computed: no cached slots, one layout on every runner. Unreadable even so,
        # the item fails with its code.
        out = await self.supervised(self._consume, prompt_token_ids, prompt_logprob_params(read_cache=False))
        return read_prompt_logprobs(out)

    def is_healthy(self) -> bool:
        return self.failure is None and not self._llm.errored

    def num_unfinished_requests(self) -> int:
        return self._llm.get_num_unfinished_requests()

    def stats(self) -> dict[str, Any]:
        """For /info: requests in the engine now, and the prefix cache's record so far."""
        return {
            "unfinished_requests": self.num_unfinished_requests(),
            "prefix_cache": prefix_cache_stats(self.step_stats.prefix_cache_queries, self.step_stats.prefix_cache_hits),
            "runtime": self.runtime,
        }

    async def shutdown(self, timeout_s: float = 20.0) -> None:
        # AsyncLLM.shutdown blocks (it joins the engine process); a hung engine must not hang the exit.
        try:
            await asyncio.wait_for(asyncio.to_thread(self._llm.shutdown), timeout_s)
        except asyncio.TimeoutError:
            log.error("engine shutdown took longer than %.0f s; leaving it to the process exit", timeout_s)
