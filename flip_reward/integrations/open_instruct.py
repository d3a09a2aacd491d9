"""open-instruct: a verifier that scores with flip-reward.

open-instruct's GRPO picks each sample's reward function by its dataset's `verifier_source`
column, from every `VerifierFunction` subclass it knows (`build_all_verifiers` in
open_instruct/ground_truth_utils.py walks `VerifierFunction.__subclasses__()`). Importing this
module adds one named "flip":

    import flip_reward.integrations.open_instruct  # before open-instruct builds its verifiers
    # dataset rows: verifier_source = "flip", ground_truth = anything (FLIP needs no answer)

open-instruct hands a verifier the decoded response and `query`, the prompt rendered as
"\\n".join(f"{role}: {content}") (dataset_transformation.py). The query is read back into turns:
the last user turn is the instruction, the system prompt and earlier turns its context. (A line
inside a message that itself starts with "user: " reads as a new turn: that format cannot tell.)
Without a query, a string label is taken as the instruction.

The service URL: `flip_reward_url` in open-instruct's args (VerifierConfig.from_args picks up
the fields below when the args have them), else $FLIP_REWARD_URL, else http://127.0.0.1:8000.
The score is a float in [0, 1] (the floor for an empty response); open-instruct multiplies it
by `verification_reward` (10 by default) and the verifier's weight. A sample the service cannot
score raises: open-instruct's `apply_verifiable_reward` would otherwise do arithmetic on None.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from flip_reward.client import AsyncFlipClient, FlipClient
from flip_reward.integrations.chat_template import strip_special_tokens
from flip_reward.integrations.rewards import LoopLimit, as_urls, reward_of

try:  # the real base classes when open-instruct is installed, so that it finds this verifier
    from open_instruct.ground_truth_utils import VerificationResult, VerifierConfig, VerifierFunction
except ImportError:  # open-instruct absent (or its GPU stack): same shapes, for use and tests without it

    @dataclasses.dataclass
    class VerificationResult:  # type: ignore[no-redef]
        score: float
        cost: float = 0.0
        reasoning: str | None = None

    @dataclasses.dataclass
    class VerifierConfig:  # type: ignore[no-redef]
        @classmethod
        def from_args(cls, *sources: Any) -> VerifierConfig:
            names = {f.name for f in dataclasses.fields(cls)}
            found = {n: getattr(s, n) for s in sources if s is not None for n in names if hasattr(s, n)}
            return cls(**found)

    class VerifierFunction:  # type: ignore[no-redef]
        def __init__(self, name: str, weight: float = 1.0, verifier_config: Any = None) -> None:
            self.name, self.weight, self.verifier_config = name, weight, verifier_config


DEFAULT_URL_ENV = "FLIP_REWARD_URL"
_ROLES = ("system", "user", "assistant", "tool")
_TURN = re.compile(rf"^({'|'.join(_ROLES)}): ?", re.MULTILINE)


def parse_query(query: str) -> list[dict[str, str]]:
    """open-instruct's "role: content" lines back into messages (text before the first role: a user turn)."""
    marks = list(_TURN.finditer(query))
    if not marks:
        return [{"role": "user", "content": query.strip()}] if query.strip() else []
    messages = []
    if query[: marks[0].start()].strip():
        messages.append({"role": "user", "content": query[: marks[0].start()].strip()})
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        content = query[mark.end() : following.start() if following else len(query)].strip()
        messages.append({"role": mark.group(1), "content": content})
    return messages


def flip_item(prediction: str, label: Any, query: str | None) -> dict:
    """The /batch_reward item: the last user turn of the query as the instruction, the turns before it
    (system prompt included; tool turns dropped) as context."""
    messages = [m for m in parse_query(query or "") if m["role"] != "tool"]
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user" and m["content"]), default=None)
    if last_user is not None:
        turns = messages[: last_user + 1]
    elif isinstance(label, str) and label.strip():
        turns = [{"role": "user", "content": label.strip()}]
    else:
        raise ValueError("flip-reward: no user turn in the query and no string label to take the instruction from")
    return {"messages": turns, "response": strip_special_tokens(prediction or "")}


@dataclasses.dataclass
class FlipVerifierConfig(VerifierConfig):
    flip_reward_url: str | None = None
    flip_reward_timeout: float = 300.0
    flip_reward_max_concurrency: int = 32


_LIMIT = LoopLimit(32)


class FlipVerifier(VerifierFunction):
    """verifier_source "flip": the FLIP reward of the response for the query's last user turn."""

    def __init__(self, verifier_config: FlipVerifierConfig | None = None) -> None:
        config = verifier_config or FlipVerifierConfig()
        super().__init__("flip", weight=1.0, verifier_config=config)
        urls = list(as_urls(config.flip_reward_url, os.environ.get(DEFAULT_URL_ENV, "http://127.0.0.1:8000")))
        self._urls, self._timeout = urls, config.flip_reward_timeout
        _LIMIT.limit = config.flip_reward_max_concurrency
        self._sync: FlipClient | None = None
        self._async: AsyncFlipClient | None = None

    @classmethod
    def get_config_class(cls) -> type:
        return FlipVerifierConfig

    @staticmethod
    def _verification(result: dict | None) -> VerificationResult:
        score = reward_of(result)  # raises for a sample the service could not score
        assert score is not None
        return VerificationResult(score=score, reasoning=(result or {}).get("unscorable"))

    def __call__(
        self,
        tokenized_prediction: list[int],
        prediction: str,
        label: Any,
        query: str | None = None,
        rollout_state: dict | None = None,
    ) -> VerificationResult:
        if self._sync is None:
            self._sync = FlipClient(self._urls, timeout=self._timeout)
        (result,) = self._sync.score([flip_item(prediction, label, query)])
        return self._verification(result)

    async def async_call(
        self,
        tokenized_prediction: list[int],
        prediction: str,
        label: Any,
        query: str | None = None,
        rollout_state: dict | None = None,
    ) -> VerificationResult:
        if self._async is None:
            self._async = AsyncFlipClient(self._urls, timeout=self._timeout)
        async with _LIMIT.gate():
            (result,) = await self._async.score([flip_item(prediction, label, query)])
        return self._verification(result)
