"""flip-reward: FLIP rewards over HTTP for RL trainers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flip-reward")  # pyproject.toml is the one place it is written
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
