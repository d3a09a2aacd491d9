"""A batch of (instruction, response) items in, one result per item out.

The path for each item: clean the response -> build the reconstruction prompt -> fit it into
the model's context -> engine generates -> parse the inferred instruction -> similarity with
the real instruction -> reward. All items of a batch go to the engine at once, so they share
its continuous batching; similarities are computed with one embedding call per batch.

Nothing here knows about HTTP. A per-item failure becomes `reward=None` with an `error`;
a dead engine raises EngineUnavailable for the whole batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from app import metrics
from app.config import PromptMode, Settings, Similarity
from app.embeddings.encoder import Embedder
from app.engines.base import Engine, EngineUnavailable, Generation, GenerationParams
from app.scoring.constraints import paper_output_regex
from app.scoring.parse import parse_direct, parse_instruction, strip_think
from app.scoring.prompts import build_reconstruction_prompt
from app.scoring.similarity import hybrid, paired_cosine_01, word_f1

log = logging.getLogger(__name__)

# Tokens kept free between the prompt and the context limit: decoding a cut response and
# encoding it again can change the token count by a few.
_FIT_MARGIN = 8


@dataclass(frozen=True)
class ScoreItem:
    instruction: str
    response: str
    context: tuple[dict[str, str], ...] = ()
    id: str | None = None


@dataclass(frozen=True)
class ScoreOptions:
    similarity: Similarity
    prompt_mode: PromptMode


@dataclass
class ItemResult:
    id: str | None
    reward: float | None = None
    inferred_instruction: str | None = None
    similarities: dict[str, float] | None = None
    parsed: bool | None = None
    truncated: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    raw_output: str | None = None
    error: str | None = None


@dataclass
class _Prepared:
    token_ids: list[int] = field(default_factory=list)
    answer_prefix: str = ""
    truncated: bool = False
    error: str | None = None


class Scorer:
    def __init__(self, engine: Engine, embedder: Embedder, settings: Settings) -> None:
        self.engine = engine
        self.embedder = embedder
        self.settings = settings

    # --- step 1: prompts (runs in a worker thread: tokenizing long responses is CPU work)

    def _render(self, response: str, context: list[dict[str, str]], mode: PromptMode) -> tuple[list[int], str]:
        prompt = build_reconstruction_prompt(response, context, mode)
        tokenizer = self.engine.tokenizer
        text = tokenizer.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer.encode(text + prompt.answer_prefix, add_special_tokens=False)
        return ids, prompt.answer_prefix

    def _prepare(self, item: ScoreItem, mode: PromptMode) -> _Prepared:
        response = strip_think(item.response) if self.settings.strip_think else item.response.strip()
        if not response:
            return _Prepared(error="response is empty after removing <think> blocks")
        context = list(item.context)
        budget = self.engine.max_model_len - self.settings.max_tokens
        truncated = False
        while True:
            ids, prefix = self._render(response, context, mode)
            if len(ids) <= budget:
                return _Prepared(token_ids=ids, answer_prefix=prefix, truncated=truncated)
            truncated = True
            if context:  # the oldest turns matter least for the last instruction
                context.pop(0)
                continue
            # Keep the head of the response: its opening says most about what was asked.
            response_ids = self.engine.tokenizer.encode(response, add_special_tokens=False)
            keep = len(response_ids) - (len(ids) - budget) - _FIT_MARGIN
            if keep <= 0:
                return _Prepared(error="the prompt does not fit the model's context even without the response")
            response = self.engine.tokenizer.decode(response_ids[:keep])

    # --- step 2: reconstruction

    async def _generate(self, prepared: _Prepared, mode: PromptMode) -> Generation:
        started = time.perf_counter()
        constrain = self.settings.structured_output and mode == "paper"
        generation = await self.engine.generate(
            prepared.token_ids,
            GenerationParams(
                max_tokens=self.settings.max_tokens,
                temperature=self.settings.temperature,
                seed=self.settings.seed,
                regex=paper_output_regex(prepared.answer_prefix) if constrain else None,
            ),
        )
        metrics.RECONSTRUCTION_LATENCY.observe(time.perf_counter() - started)
        return generation

    # --- the whole path

    async def score(self, items: list[ScoreItem], options: ScoreOptions) -> list[ItemResult]:
        mode = options.prompt_mode
        prepared = await asyncio.to_thread(lambda: [self._prepare(item, mode) for item in items])
        results = [ItemResult(id=item.id, truncated=p.truncated, error=p.error) for item, p in zip(items, prepared)]

        todo = [i for i, p in enumerate(prepared) if p.error is None]
        outputs = await asyncio.gather(*(self._generate(prepared[i], mode) for i in todo), return_exceptions=True)
        if any(isinstance(out, EngineUnavailable) for out in outputs):
            raise next(out for out in outputs if isinstance(out, EngineUnavailable))

        scored: list[int] = []
        for i, out in zip(todo, outputs):
            result = results[i]
            if isinstance(out, BaseException):
                log.warning("engine failed on item %d: %r", i, out)
                result.error = f"engine error: {type(out).__name__}"
                continue
            raw = prepared[i].answer_prefix + out.text
            parsed = parse_instruction(raw) if mode == "paper" else parse_direct(raw)
            result.raw_output = raw
            result.prompt_tokens, result.completion_tokens = out.prompt_tokens, out.completion_tokens
            result.parsed = parsed.parsed
            result.inferred_instruction = parsed.instruction
            metrics.PROMPT_TOKENS.inc(out.prompt_tokens)
            metrics.GENERATED_TOKENS.inc(out.completion_tokens)
            if not parsed.parsed:
                metrics.PARSE_FAILURES.inc()
            if result.truncated:
                metrics.TRUNCATED_ITEMS.inc()
            if not parsed.instruction:
                result.error = "the model produced no text to compare"
                continue
            scored.append(i)

        if scored:
            await self._similarities([items[i] for i in scored], [results[i] for i in scored], options)
        for result in results:
            if result.error:
                metrics.ITEM_ERRORS.labels(type=result.error.split(":")[0]).inc()
            else:
                metrics.REWARDS.observe(result.reward)
        return results

    async def _similarities(self, items: list[ScoreItem], results: list[ItemResult], options: ScoreOptions) -> None:
        started = time.perf_counter()
        inferred = await self.embedder.aencode([r.inferred_instruction for r in results])
        # The real instruction repeats across a GRPO group: cached.
        real = await self.embedder.aencode([item.instruction for item in items], cached=True)
        cosines = paired_cosine_01(inferred, real)
        for item, result, cosine in zip(items, results, cosines):
            f1 = word_f1(result.inferred_instruction, item.instruction)
            sims = {"f1": f1, "embedding": float(cosine)}
            sims["hybrid"] = hybrid(f1, sims["embedding"], self.settings.hybrid_weight)
            result.similarities = sims
            result.reward = sims[options.similarity]
        metrics.SIMILARITY_LATENCY.observe(time.perf_counter() - started)
