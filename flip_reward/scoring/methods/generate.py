"""generate (the paper): clean the response -> reconstruction prompt -> fit it into the context ->
the engine generates -> parse the inferred instruction -> similarity with the real one."""

from __future__ import annotations

import time

from flip_reward import metrics
from flip_reward.config import Settings
from flip_reward.embeddings.encoder import EmbeddingEncoder
from flip_reward.engines.base import Engine, GenerationParams
from flip_reward.scoring.fitting import Fitted, PromptFitter
from flip_reward.scoring.items import ItemResult, ScoreItem, ScoreOptions
from flip_reward.scoring.methods.engine_calls import gather, timed_generate
from flip_reward.scoring.parse import parse_direct, parse_instruction
from flip_reward.scoring.prompts import build_reconstruction_prompt
from flip_reward.scoring.similarity import hybrid, paired_cosine_01, word_f1


class Generate:
    def __init__(self, fitter: PromptFitter, settings: Settings, embedder: EmbeddingEncoder | None) -> None:
        self.fitter = fitter
        self.settings = settings
        self.embedder = embedder

    def prepare(self, item: ScoreItem, options: ScoreOptions) -> Fitted:
        """The reconstruction prompt for `item` as token ids, leaving room for the output."""
        mode = options.prompt_mode
        budget = self.fitter.max_model_len - self.settings.max_tokens
        return self.fitter.fit(
            lambda response, context: build_reconstruction_prompt(response, context, mode), item, budget
        )

    def params(self, fitted: Fitted, options: ScoreOptions) -> GenerationParams:
        return GenerationParams(
            max_tokens=self.settings.max_tokens,
            temperature=self.settings.temperature,
            seed=self.settings.seed,
            stop=fitted.stop,
        )

    async def run(
        self, engine: Engine, items: list[ScoreItem], prepared: list[Fitted], options: ScoreOptions
    ) -> list[ItemResult | BaseException]:
        mode = options.prompt_mode
        outputs = await gather([timed_generate(engine, f.token_ids, self.params(f, options)) for f in prepared])
        results: list[ItemResult | BaseException] = []
        scored: list[tuple[ScoreItem, ItemResult]] = []  # the ones with an instruction to compare
        for item, fitted, out in zip(items, prepared, outputs):
            if isinstance(out, BaseException):
                results.append(out)
                continue
            result = ItemResult(id=item.id, truncated=fitted.truncated)
            results.append(result)
            raw = fitted.answer_prefix + out.text
            parsed = parse_instruction(raw) if mode == "paper" else parse_direct(raw)
            result.raw_output = raw
            result.prompt_tokens, result.completion_tokens = out.prompt_tokens, out.completion_tokens
            result.parsed, result.inferred_instruction = parsed.parsed, parsed.instruction
            if not parsed.parsed:
                metrics.PARSE_FAILURES.inc()
            if not parsed.instruction:
                result.error, result.code = "the model produced no text to compare", "no_output"
                continue
            scored.append((item, result))
        if scored:
            await self._similarities([item for item, _ in scored], [result for _, result in scored], options)
        return results

    async def _similarities(self, items: list[ScoreItem], results: list[ItemResult], options: ScoreOptions) -> None:
        """The reward: the asked similarity of each inferred instruction with the real one. Only
        `embedding` and `hybrid` touch the embedder (an f1 request never loads it); they report
        all three similarities, f1 reports its own."""
        started = time.perf_counter()
        f1s = [word_f1(result.inferred_instruction or "", item.instruction) for item, result in zip(items, results)]
        if options.similarity == "f1":
            for result, f1 in zip(results, f1s):
                result.similarities = {"f1": f1}
                result.reward = f1
            metrics.SIMILARITY_LATENCY.observe(time.perf_counter() - started)
            return
        assert self.embedder is not None, "generate with embedding or hybrid similarity needs an embedder"
        inferred = await self.embedder.aencode([r.inferred_instruction or "" for r in results])
        # The real instruction repeats across a GRPO group: cached.
        real = await self.embedder.aencode([item.instruction for item in items], cached=True)
        cosines = paired_cosine_01(inferred, real)
        for result, f1, cosine in zip(results, f1s, cosines):
            sims = {"f1": f1, "embedding": float(cosine)}
            sims["hybrid"] = hybrid(f1, sims["embedding"], self.settings.hybrid_weight)
            result.similarities = sims
            result.reward = sims[options.similarity]
        metrics.SIMILARITY_LATENCY.observe(time.perf_counter() - started)
