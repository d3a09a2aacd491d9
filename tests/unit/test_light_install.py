"""`pip install flip-reward` without extras runs the client and the trainer adapters: importing them
needs none of the server stack, the engine or the eval harness (each is blocked here in a fresh
interpreter, so an import of any of them at import time fails the test). Without the service stack
the CLI says which extra to install instead of a traceback; without vLLM the remote-mode front
(`[server]`) still imports."""

import subprocess
import sys
import textwrap

import pytest

SERVER = (
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "pydantic_settings",
    "prometheus_client",
    "pythonjsonlogger",
    "psutil",
    "numpy",
    "json_repair",
    "sentence_transformers",
    "transformers",
    "huggingface_hub",
    "torch",
    "gguf",
    "accelerate",
)
EVAL = ("scipy", "sklearn", "matplotlib", "tqdm")
ENGINE = ("vllm",)
LIGHT = (
    "flip_reward",
    "flip_reward.client",
    "flip_reward.cli",
    "flip_reward.integrations.chat_template",
    "flip_reward.integrations.extra_logs",
    "flip_reward.integrations.rewards",
    "flip_reward.integrations.trl",
    "flip_reward.integrations.verl",
    "flip_reward.integrations.open_instruct",
)
# What FLIP_ENGINE=remote runs: everything but the in-process engine.
REMOTE_FRONT = (
    "flip_reward.main",
    "flip_reward.server",
    "flip_reward.service",
    "flip_reward.engines.openai_remote",
    "flip_reward.embeddings.encoder",
)


def run_without(blocked: tuple[str, ...], code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter where importing any of `blocked` fails as an absent module does."""
    prelude = textwrap.dedent(f"""
        import importlib, importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if any(name == b or name.startswith(b + ".") for b in {blocked!r}):
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

        sys.meta_path.insert(0, Block())
    """)
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_client_and_adapters_import_without_the_server_stack():
    blocked = SERVER + EVAL + ENGINE
    out = run_without(
        blocked,
        f"""
        for module in {LIGHT!r}:
            importlib.import_module(module)
        print(sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r}))
        """,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_remote_front_imports_without_vllm():
    out = run_without(
        ENGINE,
        f"""
        for module in {REMOTE_FRONT!r}:
            importlib.import_module(module)
        print(sorted(m for m in sys.modules if m.split(".")[0] == "vllm"))
        """,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("blocked", "argv", "missing", "fix"),
    [
        (SERVER + EVAL + ENGINE, ["serve"], "pydantic", "flip-reward[cpu]"),
        (SERVER + EVAL + ENGINE, ["prepare-model"], "pydantic", "flip-reward[cpu]"),
        (SERVER + EVAL + ENGINE, ["--help"], "pydantic", "flip-reward[cpu]"),
        (ENGINE, ["serve", "--port", "1"], "vllm", "flip-reward[cpu]"),  # [server] alone, FLIP_ENGINE=local
        (EVAL, ["eval", "--url", "http://127.0.0.1:9"], "tqdm", "flip-reward[eval]"),
    ],
)
def test_a_command_names_the_missing_install_in_one_line(blocked, argv, missing, fix):
    out = run_without(blocked, f"from flip_reward.cli import main\nsys.exit(main({argv!r}))")
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"flip-reward: No module named '{missing}'") and f'pip install "{fix}"' in line


def test_a_module_no_extra_brings_still_raises():
    out = run_without(
        ("flip_reward.evaluation",), "from flip_reward.cli import main\nmain(['eval', '--url', 'http://127.0.0.1:9'])"
    )
    assert (
        out.returncode == 1 and "Traceback" in out.stderr and "No module named 'flip_reward.evaluation'" in out.stderr
    )


def test_the_version_is_the_package_metadata():
    from importlib.metadata import version

    import flip_reward
    from flip_reward.config import Settings
    from flip_reward.main import create_app

    assert flip_reward.__version__ == version("flip-reward")
    assert create_app(Settings()).version == flip_reward.__version__


def test_the_client_imports_from_the_package_name():
    import flip_reward
    from flip_reward import AsyncFlipClient, FlipClient, FlipRequestError
    from flip_reward.client import FlipClient as Defined

    assert FlipClient is Defined and AsyncFlipClient.__module__ == FlipRequestError.__module__ == "flip_reward.client"
    with pytest.raises(AttributeError):
        flip_reward.NoSuchThing  # noqa: B018
