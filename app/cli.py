"""`flip-reward serve | prepare-model | score`.

Every Settings field is also a flag (`--max-tokens 64` is FLIP_MAX_TOKENS=64); a flag wins over
the environment. The flags are generated from the Settings class so the two never drift apart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from typing import Any

from app.config import Settings


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (each also an environment variable FLIP_<NAME>)")
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description} [env FLIP_{name.upper()}]"
        if field.annotation is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=help_text)
        else:
            group.add_argument(flag, dest=name, default=argparse.SUPPRESS, help=help_text, metavar="VALUE")


def _settings_from(args: argparse.Namespace, own: set[str]) -> Settings:
    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields and k not in own}
    return Settings(**overrides)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.logs import log_config
    from app.main import create_app, exit_after_engine_failure

    settings = _settings_from(args, set())
    app = create_app(settings, exit_on_load_failure=True)
    server = uvicorn.Server(uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level,
        timeout_graceful_shutdown=30, log_config=log_config(settings.log_level, settings.log_format),
    ))
    # A dead or hung engine ends the process (exit code 1); the orchestrator restarts it.
    app.state.service.on_engine_failure = lambda reason: exit_after_engine_failure(settings.exit_grace_s, server)
    server.run()
    service = app.state.service
    if service.load_error:
        print(f"flip-reward: {service.load_error}", file=sys.stderr)
        return 1
    if service.engine_failure:  # exit non-zero so the orchestrator restarts the service
        print(f"flip-reward: engine failed: {service.engine_failure}", file=sys.stderr)
        return 1
    return 0


def _prepare_model(args: argparse.Namespace) -> int:
    from app.models import prepare_builtin_llm

    settings = _settings_from(args, {"force"})
    started = time.perf_counter()
    path = prepare_builtin_llm(settings.cache_dir, force=args.force)
    print(f"built-in model ready at {path} ({time.perf_counter() - started:.1f} s)")
    return 0


async def _score_once(settings: Settings, prompt: str, response: str) -> dict[str, Any]:
    from app.scoring.scorer import ScoreItem, ScoreOptions
    from app.service import FlipService

    service = FlipService(settings)
    await service.load()
    if service.scorer is None:
        raise SystemExit(f"flip-reward: {service.load_error}")
    try:
        options = ScoreOptions(similarity=settings.similarity, prompt_mode=settings.prompt_mode)
        (result,) = await service.scorer.score([ScoreItem(instruction=prompt, response=response)], options)
        return vars(result)
    finally:
        await service.shutdown()


def _score(args: argparse.Namespace) -> int:
    settings = _settings_from(args, {"prompt", "response"})
    result = asyncio.run(_score_once(settings, args.prompt, args.response))
    print(json.dumps(result, indent=2))
    return 0 if result["reward"] is not None else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flip-reward", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="start the HTTP service (prepares the built-in model if needed)")
    _add_settings_flags(serve)
    serve.set_defaults(run=_serve)

    prepare = commands.add_parser("prepare-model", help="convert the packaged GGUF model into the cache")
    prepare.add_argument("--force", action="store_true", help="convert again even if the folder exists")
    _add_settings_flags(prepare)
    prepare.set_defaults(run=_prepare_model)

    score = commands.add_parser("score", help="score one (prompt, response) pair and print the result")
    score.add_argument("--prompt", required=True, help="the instruction")
    score.add_argument("--response", required=True, help="the response to score")
    _add_settings_flags(score)
    score.set_defaults(run=_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
