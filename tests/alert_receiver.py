"""A local alert receiver for the tests: Apprise's `json://127.0.0.1:PORT/...` posts land here.

A threaded HTTP server on 127.0.0.1 at a free port, recording every JSON body POSTed (with its
path); `failing = True` makes it answer 500 (a channel that refuses). Not a test module.
"""
from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    server: "AlertReceiver"
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = {"unparsed": raw.decode("utf-8", "replace")}
        with self.server.lock:
            self.server.received.append({"path": self.path, "body": body})
        status = 500 if self.server.failing else 200
        reply = b'{"ok": false}' if status == 500 else b'{"ok": true}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args) -> None:     # quiet: pytest shows what matters
        pass


class AlertReceiver(ThreadingHTTPServer):
    """Start with `start()`, stop with `stop()`; `received` lists {"path", "body"} in arrival order."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[dict] = []
        self.failing = False
        self.lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str = "") -> str:
        """The Apprise URL posting here, e.g. `json://127.0.0.1:PORT/hooks/TOKEN`."""
        return f"json://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def bodies(self) -> list[dict]:
        with self.lock:
            return [r["body"] for r in self.received]

    def start(self) -> "AlertReceiver":
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), name="alert-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
