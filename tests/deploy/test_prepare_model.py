"""`flip-reward prepare-model`: a model put into a folder ahead of the service's start (an image build
stage, an init container, the GPU overlay's Job), through the real CLI. Here on the built-in model and
on a Hugging Face cache filled by hand, with HF_HUB_OFFLINE=1: no model hub is reachable from here,
and offline mode must not try it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}


def prepare(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flip_reward.cli", "prepare-model", *args],
        check=False,
        cwd=ROOT,
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def builtin(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "SmolLM2-135M-Instruct"
    result = prepare("--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"FLIP_MODEL={out}" in result.stdout
    return out


def test_builtin_model_into_a_folder_vllm_loads(builtin):
    assert {p.name for p in builtin.iterdir()} >= MODEL_FILES
    config = json.loads((builtin / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert not builtin.with_name(builtin.name + ".partial").exists()


def test_a_prepared_folder_is_kept(builtin):
    before = (builtin / "model.safetensors").stat().st_mtime_ns
    result = prepare("--out", str(builtin))
    assert result.returncode == 0 and (builtin / "model.safetensors").stat().st_mtime_ns == before


def test_a_local_folder_is_copied(builtin, tmp_path):
    out = tmp_path / "copy"
    result = prepare("--model", str(builtin), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "model.safetensors").read_bytes() == (builtin / "model.safetensors").read_bytes()


def test_offline_a_model_missing_from_the_cache_is_a_clear_error(tmp_path):
    result = prepare(
        "--model", "Qwen/Qwen3-1.7B", "--out", str(tmp_path / "qwen"), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf")
    )
    assert result.returncode == 1
    assert "Qwen/Qwen3-1.7B: HF_HUB_OFFLINE=1 and it is not in the local cache (HF_HOME)" in result.stderr
    assert not (tmp_path / "qwen").exists()


def test_offline_a_cached_model_is_copied_out_of_the_hub_cache(builtin, tmp_path):
    """The layout huggingface_hub writes: models--ORG--NAME/snapshots/COMMIT plus refs/main."""
    commit = "0" * 40
    repo = tmp_path / "hf" / "hub" / "models--example--smol"
    shutil.copytree(builtin, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    out = tmp_path / "smol"
    result = prepare("--model", "example/smol", "--out", str(out), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert {p.name for p in out.iterdir()} >= MODEL_FILES


def test_a_folder_without_safetensors_weights_is_refused(tmp_path):
    source = tmp_path / "bin-only"
    source.mkdir()
    (source / "config.json").write_text("{}")
    (source / "pytorch_model.bin").write_bytes(b"\0")
    result = prepare("--model", str(source), "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and "no safetensors weights" in result.stderr
    assert not (tmp_path / "out").exists()
