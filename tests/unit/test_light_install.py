"""`pip install flip-reward` without extras runs the client and the trainer adapters: importing them
needs none of the server stack, the engine or the eval harness (each is blocked here in a fresh
interpreter, so an import of any of them at import time fails the test)."""

import subprocess
import sys
import textwrap

BLOCKED = (
    "fastapi",
    "uvicorn",
    "vllm",
    "torch",
    "transformers",
    "sentence_transformers",
    "scipy",
    "sklearn",
    "matplotlib",
    "tqdm",
    "numpy",
    "pydantic_settings",
    "prometheus_client",
)
LIGHT = ("app", "app.client", "app.integrations.chat_template", "app.integrations.trl", "app.integrations.verl")


def test_client_and_adapters_import_without_the_server_stack():
    code = textwrap.dedent(f"""
        import importlib, importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {BLOCKED!r}:
                    raise ModuleNotFoundError(f"blocked: {{name}} is not a light dependency")

        sys.meta_path.insert(0, Block())
        for module in {LIGHT!r}:
            importlib.import_module(module)
        print(sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_version_is_the_package_metadata():
    from importlib.metadata import version

    import app
    from app.config import Settings
    from app.main import create_app

    assert app.__version__ == version("flip-reward")
    assert create_app(Settings()).version == app.__version__
