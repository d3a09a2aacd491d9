"""`flip-reward <command> --help` for every command, through the installed entry point as a user (and
the image's ENTRYPOINT, `flip-reward serve`) runs it: argparse formats every setting's description
with %, so one stray % in flip_reward/config.py used to crash them all."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flip_reward.cli import build_parser
from flip_reward.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def _commands() -> list[str]:
    (subparsers,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(subparsers.choices)


def _flip_reward() -> str:
    script = Path(sys.executable).parent / "flip-reward"
    found = str(script) if script.exists() else shutil.which("flip-reward")
    assert found, "flip-reward not installed: pip install -e '.[cpu,test]'"
    return found


def test_every_command_is_listed():
    assert {"serve", "prepare-model", "score", "eval"} <= set(_commands())


@pytest.mark.parametrize("command", [None, *_commands()])
def test_help_works(command):
    args = [_flip_reward(), *([command] if command else []), "--help"]
    # PYTHONPATH: this checkout's app package, whatever the entry point's install points at.
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(args, check=False, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: flip-reward") and result.stderr == ""
    if command:
        # every setting is a flag, with its description and its variable
        flat = "".join(result.stdout.split())
        for name in Settings.model_fields:
            assert f"--{name.replace('_', '-')}" in flat and f"[envFLIP_{name.upper()}]" in flat, name
        text = " ".join(result.stdout.split())
        with_percent = [w for f in Settings.model_fields.values() for w in (f.description or "").split() if "%" in w]
        assert all(word in text for word in with_percent), with_percent
