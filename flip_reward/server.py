"""uvicorn with a drain phase on SIGTERM / SIGINT.

Plain uvicorn closes its listening socket as soon as the signal comes, so a load balancer that
has not yet noticed gets connection errors, and /ready can no longer say 503. Here the first
signal only starts a drain: the service stops accepting (/ready and new scoring requests answer
503), the socket stays open, and the server waits until the requests in flight have finished or
FLIP_SHUTDOWN_GRACE_S has passed. Then uvicorn's normal shutdown runs: it closes the socket,
cancels whatever is still running after a short extra wait, and the lifespan shuts the engine
down. A second signal skips the rest of the drain.
"""

from __future__ import annotations

import logging
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from flip_reward.config import Settings

log = logging.getLogger(__name__)

# After the drain, uvicorn's own wait for connections to close: short, the drain did the waiting.
_FINAL_WAIT_S = 2


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, grace_s: float) -> None:
        super().__init__(config)
        self.app = app
        self.grace_s = grace_s
        self.drain_signal: int | None = None
        self.drain_deadline = 0.0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_signal is None and not self.should_exit:
            # Runs in the signal handler: set state only; on_tick (in the event loop) does the rest.
            self.drain_signal = sig
            self.drain_deadline = time.monotonic() + self.grace_s
            self.app.state.service.stop_accepting()
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_signal is not None and not self.should_exit:
            in_flight = len(self.server_state.tasks)
            if in_flight == 0 or time.monotonic() >= self.drain_deadline:
                if in_flight:
                    log.warning("shutdown grace of %.0f s is over; cancelling %d request(s)", self.grace_s, in_flight)
                else:
                    log.info("drained: no request in flight; shutting down")
                super().handle_exit(self.drain_signal, None)  # uvicorn's normal shutdown from here
        return await super().on_tick(counter)


def serve(app: FastAPI, settings: Settings) -> None:
    from flip_reward.logs import log_config
    from flip_reward.main import exit_after_engine_failure

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Above info the access line is never written; off, uvicorn does not format its arguments.
        access_log=settings.log_level in ("debug", "info"),
        timeout_graceful_shutdown=_FINAL_WAIT_S,
        log_config=log_config(settings.log_level, settings.log_format),
    )
    server = DrainingServer(config, app, settings.shutdown_grace_s)
    # A dead or hung engine ends the process (exit code 1); the orchestrator restarts it.
    app.state.service.on_engine_failure = lambda reason: exit_after_engine_failure(settings.exit_grace_s, server)
    server.run()
