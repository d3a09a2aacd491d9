"""A batch of (instruction, response) items in, one result per item out.

Three methods, all served by the same engine:

- generate (the paper): clean the response -> reconstruction prompt -> fit it into the context ->
  the engine generates -> parse the inferred instruction -> similarity with the real one.
- likelihood (backward likelihood): one prefill scores the real instruction token by token as the
  model's answer to "what was the instruction?" after the response; optionally minus the same
  without the response (pointwise mutual information), and minus the mean score of unrelated
  instructions after the same response (distractors, prefilled from the prefix cache). Nothing to
  decode or parse.
- judge: the LLM-as-a-judge baseline, a 1-10 score from the same model.

All items of a batch go to the engine at once, so they share its continuous batching.
Nothing here knows about HTTP. Content that cannot earn a reward (empty, only <think>, only
copies of the instruction) gets the floor reward with its `unscorable` reason; a per-item failure
becomes `reward=None` with an `error` and its `code` (app/scoring/outcomes.py); a dead engine
raises EngineUnavailable for the whole batch.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from app import metrics
from app.config import Method, PromptMode, Settings, Similarity
from app.embeddings.encoder import Embedder
from app.engines.base import Engine, EngineUnavailable, Generation, GenerationParams
from app.scoring import guards
from app.scoring.constraints import paper_output_regex
from app.scoring.outcomes import ItemErrorCode, UnscorableReason, unscorable_reason
from app.scoring.parse import parse_direct, parse_instruction, parse_judge_score, strip_think
from app.scoring.prompts import (
    DISTRACTOR_INSTRUCTIONS,
    NO_RESPONSE,
    Prompt,
    build_judge_prompt,
    build_likelihood_prompt,
    build_reconstruction_prompt,
)
from app.scoring.similarity import hybrid, paired_cosine_01, word_f1

log = logging.getLogger(__name__)

# Tokens kept free between the prompt and the context limit: decoding a cut response and
# encoding it again can change the token count by a few.
_FIT_MARGIN = 8
_JUDGE_MAX_TOKENS = 8


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
    method: Method = "generate"
    copy_guard: bool = True
    distractors: int | None = None  # likelihood: unrelated instructions to contrast with; None: Settings.likelihood_distractors


@dataclass
class ItemResult:
    id: str | None
    method: Method = "generate"
    reward: float | None = None
    inferred_instruction: str | None = None
    similarities: dict[str, float] | None = None
    likelihood: dict[str, float | int | None] | None = None
    judge_score: int | None = None
    copied_fraction: float | None = None
    parsed: bool | None = None
    truncated: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    raw_output: str | None = None
    error: str | None = None
    code: ItemErrorCode | None = None  # set with `error`
    unscorable: UnscorableReason | None = None  # set with the floor reward


@dataclass
class _Fitted:
    """A prompt rendered to token ids that fits the context, or the reason it could not."""

    token_ids: list[int] = field(default_factory=list)
    answer_prefix: str = ""
    response: str = ""
    context: list[dict[str, str]] = field(default_factory=list)
    truncated: bool = False
    error: str | None = None
    code: ItemErrorCode | None = None
    stop: tuple[str, ...] = ()
    text: str = ""  # the rendered prompt, and each token's character span in it
    offsets: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class LikelihoodInputs:
    """One item's likelihood prompts: the instruction scored after the response (`conditional_ids`)
    and after no response (`unconditional_ids`, the PMI baseline); the same for each distractor."""

    fitted: _Fitted
    instruction_ids: list[int]
    unconditional_ids: list[int]
    response_span: tuple[int, int]  # token positions of the response in fitted.token_ids
    distractor_ids: list[list[int]] = field(default_factory=list)
    unconditional_head: list[int] = field(default_factory=list)

    @property
    def conditional_ids(self) -> list[int]:
        return self.fitted.token_ids + self.instruction_ids


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x > -60 else 0.0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


Scored = tuple[list[float], list[float] | None]  # an instruction's token logprobs with and without the response


def likelihood_reward(
    cond: list[float], uncond: list[float] | None, scale: float, distractors: list[Scored] = ()
) -> tuple[float, dict[str, float | int | bool | None]]:
    """Reward from the instruction's token log-probabilities with the response (`cond`) and, for
    PMI, without it (`uncond`); `distractors` holds the same for unrelated instructions.

    An instruction's score is mean(cond) - mean(uncond) with PMI, mean(cond) without.
    With distractors: sigmoid((score - mean distractor score) / scale), 0.5 when the response
    explains its own instruction no better than unrelated ones. Without: sigmoid(score / scale)
    for PMI (0.5 when the response tells the model nothing), exp(score / scale) without a baseline
    (the geometric-mean token probability)."""

    def score(c: list[float], u: list[float] | None) -> float:
        return _mean(c) - (_mean(u) if u else 0.0)

    own = score(cond, uncond)
    details: dict[str, float | int | bool | None] = {
        "conditional": _mean(cond),
        "unconditional": _mean(uncond) if uncond else None,
        "scored_tokens": len(cond),
    }
    if uncond:
        details["pmi"] = own
    if distractors:
        details["distractor_score"] = _mean([score(c, u) for c, u in distractors])
        details["contrast"] = own - details["distractor_score"]
        return _sigmoid(details["contrast"] / scale), details
    return _sigmoid(own / scale) if uncond else math.exp(own / scale), details


def _scored_tail(logprobs: list[float | None], n: int) -> list[float]:
    """The last n (instruction) logprobs; a gap there means the engine broke its contract, and a
    gap is never scored as 0."""
    tail = logprobs[-n:]
    if None in tail:
        raise RuntimeError("the engine returned no logprob for a scored instruction token")
    return tail


class Scorer:
    def __init__(self, engine: Engine, embedder: Embedder, settings: Settings) -> None:
        self.engine = engine
        self.embedder = embedder
        self.settings = settings
        # log p(instruction) without a response, per instruction: a GRPO group shares it.
        self._unconditional: OrderedDict[tuple[int, ...], asyncio.Future[list[float]]] = OrderedDict()

    # --- prompts (run in a worker thread: tokenizing long responses is CPU work)

    def _render(self, prompt: Prompt) -> list[int]:
        return self._render_with_offsets(prompt)[0]

    def _render_with_offsets(self, prompt: Prompt) -> tuple[list[int], str, list[tuple[int, int]]]:
        tokenizer = self.engine.tokenizer
        text = tokenizer.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)
        text += prompt.answer_prefix
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(encoded["input_ids"]), text, [tuple(o) for o in encoded["offset_mapping"]]

    def _clean(self, response: str) -> str:
        return strip_think(response) if self.settings.strip_think else response.strip()

    def _fit(self, build: Callable[[str, list[dict[str, str]]], Prompt], item: ScoreItem, budget: int) -> _Fitted:
        """Render build(response, context) within `budget` tokens: drop the oldest context turns
        first, then cut the tail of the response (its opening says most about what was asked)."""
        response = self._clean(item.response)
        if not response:
            return _Fitted(error="response is empty after removing <think> blocks", code="no_output")
        context = list(item.context)
        truncated = False
        while True:
            prompt = build(response, context)
            ids, text, offsets = self._render_with_offsets(prompt)
            if len(ids) <= budget:
                return _Fitted(ids, prompt.answer_prefix, response, context, truncated, stop=prompt.stop,
                               text=text, offsets=offsets)
            truncated = True
            if context:
                context.pop(0)
                continue
            response_ids = self.engine.tokenizer.encode(response, add_special_tokens=False)
            keep = len(response_ids) - (len(ids) - budget) - _FIT_MARGIN
            if keep <= 0:
                return _Fitted(error="the prompt does not fit the model's context even without the response",
                               code="context_overflow")
            response = self.engine.tokenizer.decode(response_ids[:keep])

    def apply_copy_guard(self, item: ScoreItem) -> tuple[ScoreItem, float]:
        """The item with the passages its response copies from the instruction deleted, and the
        share of the response they held (see app/scoring/guards.py)."""
        response, copied = guards.remove_copied(item.instruction, self._clean(item.response),
                                                self.settings.copy_guard_words)
        return ScoreItem(item.instruction, response, item.context, item.id), copied

    # --- the entry point

    async def score(self, items: list[ScoreItem], options: ScoreOptions) -> list[ItemResult]:
        method = {"generate": self._generate_all, "likelihood": self._likelihood_all, "judge": self._judge_all}
        # The copy guard (FLIP methods only; the judge sees the instruction anyway): score what the
        # response adds to the instruction. A response that was nothing but copies scores 0.
        guard = options.copy_guard and options.method != "judge"
        guarded = await asyncio.to_thread(lambda: [self.apply_copy_guard(item) for item in items]) if guard else []
        to_score = [item for item, _ in guarded] if guard else items
        # Nothing to read (empty, only <think>, only copies): the floor reward, with the reason.
        floor = [unscorable_reason(item.response, self.settings.strip_think,
                                   *((guarded[i][0].response, guarded[i][1]) if guard else ()))
                 for i, item in enumerate(items)]
        todo = [i for i in range(len(items)) if floor[i] is None]
        scored = await method[options.method]([to_score[i] for i in todo], options) if todo else []
        results = [ItemResult(id=item.id, reward=self.settings.unscorable_reward, unscorable=reason)
                   for item, reason in zip(items, floor)]
        for i, result in zip(todo, scored):
            results[i] = result
        for result, (_, copied) in zip(results, guarded):
            result.copied_fraction = copied
        for result in results:
            result.method = options.method
            if result.truncated:
                metrics.TRUNCATED_ITEMS.inc()
        return results

    async def _run(self, calls: list) -> list:
        """Await engine calls together; a dead engine fails the whole batch, other errors stay per item."""
        outputs = await asyncio.gather(*calls, return_exceptions=True)
        for out in outputs:
            if isinstance(out, EngineUnavailable):
                raise out
        return outputs

    async def _timed_generate(self, token_ids: list[int], params: GenerationParams) -> Generation:
        started = time.perf_counter()
        generation = await self.engine.generate(token_ids, params)
        metrics.RECONSTRUCTION_LATENCY.observe(time.perf_counter() - started)
        metrics.PROMPT_TOKENS.inc(generation.prompt_tokens)
        metrics.GENERATED_TOKENS.inc(generation.completion_tokens)
        return generation

    # --- generate: the paper's method

    async def _generate_all(self, items: list[ScoreItem], options: ScoreOptions) -> list[ItemResult]:
        mode = options.prompt_mode
        fitted = await asyncio.to_thread(lambda: [self.prepare_generate(item, mode) for item in items])
        results = [ItemResult(id=item.id, truncated=f.truncated, error=f.error, code=f.code)
                   for item, f in zip(items, fitted)]
        todo = [i for i, f in enumerate(fitted) if f.error is None]
        constrain = self.settings.structured_output and mode == "paper"

        def params(f: _Fitted) -> GenerationParams:
            return GenerationParams(
                max_tokens=self.settings.max_tokens,
                temperature=self.settings.temperature,
                seed=self.settings.seed,
                stop=f.stop,
                regex=paper_output_regex(f.answer_prefix) if constrain else None,
            )

        outputs = await self._run([self._timed_generate(fitted[i].token_ids, params(fitted[i])) for i in todo])

        scored: list[int] = []
        for i, out in zip(todo, outputs):
            result = results[i]
            if isinstance(out, BaseException):
                log.warning("engine failed on item %d: %r", i, out)
                result.error, result.code = f"engine error: {type(out).__name__}", "engine_error"
                continue
            raw = fitted[i].answer_prefix + out.text
            parsed = parse_instruction(raw) if mode == "paper" else parse_direct(raw)
            result.raw_output = raw
            result.prompt_tokens, result.completion_tokens = out.prompt_tokens, out.completion_tokens
            result.parsed, result.inferred_instruction = parsed.parsed, parsed.instruction
            if not parsed.parsed:
                metrics.PARSE_FAILURES.inc()
            if not parsed.instruction:
                result.error, result.code = "the model produced no text to compare", "no_output"
                continue
            scored.append(i)
        if scored:
            await self._similarities([items[i] for i in scored], [results[i] for i in scored], options)
        return results

    def prepare_generate(self, item: ScoreItem, mode: PromptMode) -> _Fitted:
        """The reconstruction prompt for `item` as token ids, leaving room for the output."""
        budget = self.engine.max_model_len - self.settings.max_tokens
        return self._fit(lambda response, context: build_reconstruction_prompt(response, context, mode), item, budget)

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

    # --- likelihood: backward likelihood of the real instruction

    def prepare_likelihood(self, item: ScoreItem, distractors: int | None = None) -> LikelihoodInputs:
        instruction_ids = self._instruction_ids(item.instruction)
        if not instruction_ids:
            return LikelihoodInputs(_Fitted(error="the instruction is empty", code="empty_instruction"), [], [], (0, 0))
        k = self.settings.likelihood_distractors if distractors is None else distractors
        distractor_ids = self._distractor_ids[:k]
        longest = max([len(instruction_ids)] + [len(d) for d in distractor_ids])
        budget = self.engine.max_model_len - longest - 1
        fitted = self._fit(build_likelihood_prompt, item, budget)
        head = self._render(build_likelihood_prompt(NO_RESPONSE, fitted.context)) if fitted.context else self._no_response_head
        span = self._response_span(fitted) if fitted.error is None else (0, 0)
        return LikelihoodInputs(fitted, instruction_ids, head + instruction_ids, span, distractor_ids, head)

    def _instruction_ids(self, instruction: str) -> list[int]:
        ids = self.engine.tokenizer.encode(instruction.strip(), add_special_tokens=False)
        return ids[: self.settings.max_instruction_tokens]

    # The same for every item: tokenized once.
    @cached_property
    def _distractor_ids(self) -> list[list[int]]:
        return [self._instruction_ids(d) for d in DISTRACTOR_INSTRUCTIONS]

    @cached_property
    def _no_response_head(self) -> list[int]:
        """The PMI baseline's prompt up to the instruction, for an item without earlier turns."""
        return self._render(build_likelihood_prompt(NO_RESPONSE))

    @staticmethod
    def _response_span(fitted: _Fitted) -> tuple[int, int]:
        """Token positions of the response inside the rendered likelihood prompt."""
        quoted = f'"""\n{fitted.response}\n"""'  # as build_likelihood_prompt quotes it: a short
        # response ("the") also occurs in the question after it
        text = fitted.text
        start = text.rindex(quoted) + 4 if quoted in text else text.rindex(fitted.response)
        end = start + len(fitted.response)
        inside = [k for k, (a, b) in enumerate(fitted.offsets) if a >= start and b <= end and b > a]
        return (inside[0], inside[-1] + 1) if inside else (0, 0)

    async def _prompt_logprobs(self, token_ids: list[int], scored_from: int = 0) -> list[float | None]:
        logprobs = await self.engine.prompt_logprobs(token_ids, scored_from)
        metrics.PROMPT_TOKENS.inc(len(token_ids))
        return logprobs

    async def _instruction_logprobs(self, token_ids: list[int], n: int, scored_from: int = 0) -> list[float]:
        return _scored_tail(await self._prompt_logprobs(token_ids, scored_from), n)

    async def _unconditional_logprobs(self, token_ids: list[int], n: int) -> list[float]:
        """Cached per prompt, in flight included: a batch asks for each distractor's baseline once
        per item, all at the same moment."""
        key = tuple(token_ids)
        task = self._unconditional.get(key)
        if task is None:
            task = asyncio.ensure_future(self._instruction_logprobs(token_ids, n))
            self._unconditional[key] = task
            while len(self._unconditional) > 4096:
                self._unconditional.popitem(last=False)
        self._unconditional.move_to_end(key)
        try:
            return await asyncio.shield(task)  # one caller giving up must not cancel it for the others
        except BaseException:
            if task.done() and self._unconditional.get(key) is task:
                del self._unconditional[key]  # a failure is not cached
            raise

    async def _likelihood_one(self, inputs: LikelihoodInputs, pmi: bool) -> tuple[list[float | None], list[Scored]]:
        """The real instruction's prompt logprobs (from the response on: they feed the stuffing guard;
        the shared system prompt before it may come from the prefix cache) and, for the PMI baseline,
        its unconditional ones; then each distractor's, once the response is in the prefix cache
        (only the distractor's own tokens are computed)."""
        n = len(inputs.instruction_ids)
        instructions = [(inputs.instruction_ids, inputs.unconditional_ids)] + [
            (d, inputs.unconditional_head + d) for d in inputs.distractor_ids]
        real, *uncond = await asyncio.gather(
            self._prompt_logprobs(inputs.conditional_ids, scored_from=inputs.response_span[0]),
            *[self._unconditional_logprobs(ids, len(ins)) for ins, ids in instructions if pmi],
        )
        prefix = len(inputs.fitted.token_ids)
        distractor_cond = await asyncio.gather(
            *[self._instruction_logprobs(inputs.fitted.token_ids + d, len(d), scored_from=prefix)
              for d in inputs.distractor_ids]
        )
        cond = [_scored_tail(real, n), *distractor_cond]
        return real, list(zip(cond, uncond or [None] * len(cond)))

    async def _likelihood_all(self, items: list[ScoreItem], options: ScoreOptions) -> list[ItemResult]:
        guard = options.copy_guard
        prepared = await asyncio.to_thread(lambda: [self.prepare_likelihood(item, options.distractors) for item in items])
        results = [ItemResult(id=item.id, truncated=p.fitted.truncated, error=p.fitted.error, code=p.fitted.code)
                   for item, p in zip(items, prepared)]
        todo = [i for i, p in enumerate(prepared) if p.fitted.error is None]
        pmi = self.settings.likelihood_baseline == "pmi"
        started = time.perf_counter()
        outputs = await self._run([self._likelihood_one(prepared[i], pmi) for i in todo])
        metrics.RECONSTRUCTION_LATENCY.observe(time.perf_counter() - started)
        for i, out in zip(todo, outputs):
            result, inputs = results[i], prepared[i]
            if isinstance(out, BaseException):
                log.warning("engine failed on item %d: %r", i, out)
                result.error, result.code = f"engine error: {type(out).__name__}", "engine_error"
                continue
            logprobs, [(cond, uncond), *distractors] = out
            result.prompt_tokens = len(inputs.conditional_ids)
            result.reward, result.likelihood = likelihood_reward(cond, uncond, self.settings.likelihood_scale,
                                                                 distractors)
            start, end = inputs.response_span
            span = logprobs[start:end]
            fluency = _mean(span) if span and None not in span else None  # None: no guard, never a made-up 0
            result.likelihood["response_fluency"] = fluency
            if guard and result.reward > 0.0 and guards.is_keyword_stuffing(
                items[i].instruction, inputs.fitted.response, fluency
            ):
                result.likelihood.setdefault("reward_without_guard", result.reward)
                result.likelihood["keyword_stuffing"] = True
                result.reward = 0.0
        return results

    # --- judge: the LLM-as-a-judge baseline

    async def _judge_all(self, items: list[ScoreItem], options: ScoreOptions) -> list[ItemResult]:
        budget = self.engine.max_model_len - _JUDGE_MAX_TOKENS

        def fit(item: ScoreItem) -> _Fitted:
            return self._fit(lambda r, c: build_judge_prompt(item.instruction, r, c), item, budget)

        fitted = await asyncio.to_thread(lambda: [fit(item) for item in items])
        results = [ItemResult(id=item.id, truncated=f.truncated, error=f.error, code=f.code)
                   for item, f in zip(items, fitted)]
        todo = [i for i, f in enumerate(fitted) if f.error is None]
        params = GenerationParams(max_tokens=_JUDGE_MAX_TOKENS, temperature=0.0, stop=("\n",))
        outputs = await self._run([self._timed_generate(fitted[i].token_ids, params) for i in todo])
        for i, out in zip(todo, outputs):
            result = results[i]
            if isinstance(out, BaseException):
                result.error, result.code = f"engine error: {type(out).__name__}", "engine_error"
                continue
            result.raw_output = fitted[i].answer_prefix + out.text
            result.prompt_tokens, result.completion_tokens = out.prompt_tokens, out.completion_tokens
            score = parse_judge_score(out.text)
            result.parsed = score is not None
            if score is None:
                metrics.PARSE_FAILURES.inc()
                result.error, result.code = "judge gave no score from 1 to 10", "judge_no_score"
                continue
            result.judge_score = score
            result.reward = (score - 1) / 9
        return results
