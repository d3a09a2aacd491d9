"""Loopback helpers shared by the unit, contract and integration tests: a free port, and an ASGI
app served by real uvicorn on a thread (a real socket, no subprocess)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn


def free_port() -> int:
    """A port nothing listens on now (the OS picks it; a later bind may still race another process)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThreadServer:
    """`app` on 127.0.0.1 with real uvicorn in a daemon thread; `url` once started, `close()` to stop."""

    def __init__(self, app, start_timeout_s: float = 10.0) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + start_timeout_s
        while not self.server.started:
            assert time.monotonic() < deadline, "the loopback test server did not start"
            time.sleep(0.01)

    def close(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=timeout_s)
