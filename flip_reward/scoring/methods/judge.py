"""judge: the LLM-as-a-judge baseline (the paper's main comparison), a 1-10 score from the same model."""

from __future__ import annotations

from flip_reward import metrics
from flip_reward.config import Settings
from flip_reward.engines.base import Engine, GenerationParams
from flip_reward.scoring.fitting import Fitted, PromptFitter
from flip_reward.scoring.items import ItemResult, ScoreItem, ScoreOptions
from flip_reward.scoring.methods.engine_calls import gather, timed_generate
from flip_reward.scoring.parse import parse_judge_score
from flip_reward.scoring.prompts import build_judge_prompt

MAX_TOKENS = 8
PARAMS = GenerationParams(max_tokens=MAX_TOKENS, temperature=0.0, stop=("\n",))


class Judge:
    def __init__(self, fitter: PromptFitter, settings: Settings) -> None:
        self.fitter = fitter
        self.settings = settings

    def prepare(self, item: ScoreItem, options: ScoreOptions) -> Fitted:
        budget = self.fitter.max_model_len - MAX_TOKENS
        return self.fitter.fit(lambda r, c: build_judge_prompt(item.instruction, r, c), item, budget)

    async def run(
        self, engine: Engine, items: list[ScoreItem], prepared: list[Fitted], options: ScoreOptions
    ) -> list[ItemResult | BaseException]:
        outputs = await gather([timed_generate(engine, f.token_ids, PARAMS) for f in prepared])
        results: list[ItemResult | BaseException] = []
        for item, fitted, out in zip(items, prepared, outputs):
            if isinstance(out, BaseException):
                results.append(out)
                continue
            result = ItemResult(id=item.id, truncated=fitted.truncated)
            results.append(result)
            result.raw_output = fitted.answer_prefix + out.text
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
