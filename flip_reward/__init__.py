"""flip-reward: FLIP rewards over HTTP for RL trainers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flip-reward")  # pyproject.toml is the one place it is written
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["AsyncFlipClient", "FlipClient", "FlipRequestError", "__version__"]


def __getattr__(name: str):  # the client on first use: `import flip_reward` stays as light as it is
    if name in ("AsyncFlipClient", "FlipClient", "FlipRequestError"):
        from flip_reward import client

        return getattr(client, name)
    raise AttributeError(f"module 'flip_reward' has no attribute {name!r}")
