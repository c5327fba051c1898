"""Serve a local folder over HTTP on 127.0.0.1, so URL datasets (the demo corpus, test fixtures) download for real.

`serve_folder` is a context manager for tests and the demo (ephemeral port by default); `FolderServer` is the same
server with explicit `start()`/`stop()`; `serve_forever` blocks for `mixer serve DIR`. The server is threaded, never
logs requests, sends a fixed Content-Type per file extension, and only ever binds the loopback interface.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
# Pinned here rather than taken from the `mimetypes` module, whose answers depend on the machine's /etc/mime.types.
CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".json": "application/json",
    ".jsonl": "application/jsonl",
    ".tsv": "text/tab-separated-values; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".parquet": "application/vnd.apache.parquet",
    ".tar": "application/x-tar",
    "": "application/octet-stream",
}


class _QuietHandler(SimpleHTTPRequestHandler):
    """Static files from the served folder; no access log, no directory listings."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the CDNs behind real image URLs do
    timeout = 30  # idle keep-alive connections are dropped so their threads end
    extensions_map = CONTENT_TYPES

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def list_directory(self, path: str | Path) -> None:
        self.send_error(404, "directory listing disabled")
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-response (a downloader's timeout) is routine, not worth a traceback on stderr.
        return None


class FolderServer:
    """A threaded HTTP server for `root` on 127.0.0.1; `url` is valid between `start()` and `stop()`.

    `root` may not exist yet: requests then get 404 until it is created (the demo picks the port first, because
    the files it writes contain the URL). A `root` that exists but is not a folder is an error.
    """

    def __init__(self, root: str | Path, port: int = 0) -> None:
        self.root = Path(root).resolve()
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(f"cannot serve {self.root}: not a folder")
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL, `http://127.0.0.1:PORT`, without a trailing slash."""
        if self._server is None:
            raise RuntimeError("the server is not running: call start() first")
        return f"http://{HOST}:{self._server.server_address[1]}"

    def start(self) -> FolderServer:
        """Bind and start serving in a background thread; returns self."""
        if self._server is not None:
            return self
        try:
            self._server = _Server((HOST, self.port), partial(_QuietHandler, directory=str(self.root)))
        except OSError as e:
            raise OSError(f"cannot serve {self.root} on {HOST}:{self.port}: {e.strerror or e}") from e
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"serve:{self.root}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close the socket and wait for the serving thread; safe to call twice."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> FolderServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def serve_folder(root: str | Path, port: int = 0) -> Iterator[str]:
    """Serve `root` on 127.0.0.1 (an ephemeral port unless `port` is given) and yield its base URL."""
    with FolderServer(root, port) as server:
        yield server.url


def serve_forever(root: str | Path, port: int = 0, ready: Callable[[str], None] | None = None) -> None:
    """Serve the existing folder `root` until interrupted (Ctrl-C); `ready` receives the base URL once bound."""
    if not Path(root).is_dir():
        raise FileNotFoundError(f"cannot serve {root}: no such folder")
    server = FolderServer(root, port).start()
    try:
        if ready is not None:
            ready(server.url)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
