"""A fault-injecting HTTP image server on 127.0.0.1 for the downloader tests, the end-to-end build test and benchmarks.

Every route is one entry of `ROUTES` (first path segment → reply function); the server counts requests per path and
the peak number of requests in flight per first segment, and records every User-Agent, so tests can assert retry
counts and concurrency caps exactly.

Routes (NAME is a key of the `images` dict, percent-decoded; unknown names are 404):

    /ok/NAME               the image
    /hold/NAME?n=K         the image, released in cohorts of K arrivals (or after `hold_seconds`): K in flight at once
    /404, /status/CODE     that status, every time
    /500-then-ok/NAME      500 on the first request for this URL (path and query), then the image
    /429/NAME              429 with `Retry-After: 1` on the first request for this URL, then the image
    /slow-connect          reads the request, then never answers: the client sees a *read* timeout (a true connect
                           timeout needs a full backlog: see `stalled_listener`)
    /drip/NAME?every=S     the image one byte every S seconds (default `drip_every`)
    /truncated/NAME        Content-Length larger than the body, then the connection closes
    /html                  200 text/html page
    /corrupt.jpg           a real JPEG header followed by garbage
    /bomb.png              a ~110 kB 1-bit PNG that declares 30000x30000 pixels
    /redirect-loop         302 to itself, forever
    /redirect/N/NAME       N hops of 302, then the image
    /redirect-to?url=URL   302 to URL, whatever its scheme or host (`file:///…`, another host)
    /noai/NAME             the image with `X-Robots-Tag: noai`
    /big.jpg               `big_size` bytes with a Content-Length
    /big-chunked.jpg       `big_size` bytes, chunked, no Content-Length
"""

from __future__ import annotations

import functools
import io
import random
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


@dataclass
class Reply:
    """What a route answers; `mode` says how the body goes on the wire."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    mode: str = "normal"  # normal | truncated | drip | hang | chunked
    drip_every: float = 0.0


@dataclass
class ServerState:
    """Counters shared by all handler threads of one server."""

    images: dict[str, bytes]
    big_size: int
    drip_every: float
    hold_seconds: float
    hang_seconds: float
    hits: Counter[str] = field(default_factory=Counter)
    hits_by_url: Counter[str] = field(default_factory=Counter)
    in_flight: Counter[str] = field(default_factory=Counter)
    max_concurrent: Counter[str] = field(default_factory=Counter)
    user_agents: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    hold_arrivals: int = 0
    request_times: dict[str, list[float]] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)
    stopping: threading.Event = field(default_factory=threading.Event)


def _content_type(name: str) -> str:
    dot = name.rfind(".")
    return CONTENT_TYPES.get(name[dot:].lower(), "application/octet-stream") if dot >= 0 else "application/octet-stream"


def _image(state: ServerState, name: str, **extra: str) -> Reply:
    if name not in state.images:
        return Reply(404, b"no such image")
    return Reply(200, state.images[name], {"Content-Type": _content_type(name), **extra})


def _first_time(state: ServerState, url: str) -> bool:
    return state.hits_by_url[url] == 1


@functools.cache
def bomb_png(side: int = 30000) -> bytes:
    """A valid 1-bit grayscale PNG of side x side black pixels: ~110 kB on disk, `side**2` pixels when decoded.

    Built in milliseconds: a full flush makes each deflated block of 1000 rows independent of what came before, so one
    compressed block is repeated instead of deflating 112 MB of zeros.
    """
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte 0 + packed bits
    per_block = 1000
    n_blocks, rest = divmod(side, per_block)
    block = row * per_block
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated_block = z.compress(block) + z.flush(zlib.Z_FULL_FLUSH)
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = z.compress(row * rest) + z.flush()
    adler = 1
    for _ in range(n_blocks):
        adler = zlib.adler32(block, adler)
    adler = zlib.adler32(row * rest, adler)
    idat = b"\x78\xda" + deflated_block * n_blocks + tail + struct.pack(">I", adler)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@functools.cache
def corrupt_jpeg() -> bytes:
    """A real 64x64 JPEG whose entropy-coded data after the first third is replaced by seeded garbage (no EOI)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, "JPEG", quality=90)
    good = buf.getvalue()
    keep = len(good) // 3
    garbage = random.Random(0).randbytes(len(good) - keep).replace(b"\xff", b"\x00")
    return good[:keep] + garbage


HTML_PAGE = b"<!doctype html><html><head><title>Not an image</title></head><body><p>Hello.</p></body></html>"


def _hold(state: ServerState, path: str, parts: list[str], query: dict[str, list[str]]) -> Reply:
    # Arrivals are released in cohorts of n: arrivals 1..n together, then n+1..2n, ... A count that only grows cannot
    # race the way "wait until n in flight" does (the n-th request may leave before the others re-check).
    want = max(1, int(query.get("n", ["1"])[0]))
    with state.cond:
        state.hold_arrivals += 1
        cohort_end = -(-state.hold_arrivals // want) * want
        state.cond.notify_all()
        state.cond.wait_for(lambda: state.hold_arrivals >= cohort_end, timeout=state.hold_seconds)
    return _image(state, parts[0])


def _fail_once(status: int, headers: dict[str, str]) -> Callable[..., Reply]:
    def reply(state: ServerState, path: str, parts: list[str], query: dict[str, list[str]]) -> Reply:
        return Reply(status, b"try again", dict(headers)) if _first_time(state, path) else _image(state, parts[0])

    return reply


def _drip(state: ServerState, path: str, parts: list[str], query: dict[str, list[str]]) -> Reply:
    reply = _image(state, parts[0])
    if reply.status == 200:
        reply.mode = "drip"
        reply.drip_every = float(query.get("every", [state.drip_every])[0])
    return reply


def _truncated(state: ServerState, path: str, parts: list[str], query: dict[str, list[str]]) -> Reply:
    reply = _image(state, parts[0])
    if reply.status == 200:
        reply.mode = "truncated"
    return reply


def _redirect(state: ServerState, path: str, parts: list[str], query: dict[str, list[str]]) -> Reply:
    hops, name = int(parts[0]), parts[1]
    if hops <= 0:
        return _image(state, name)
    return Reply(302, b"", {"Location": f"/redirect/{hops - 1}/{name}"})


def _big(state: ServerState, path: str, parts: list[str], query: dict[str, list[str]], chunked: bool) -> Reply:
    body = b"\xff\xd8" + bytes(state.big_size - 2)
    return Reply(200, body, {"Content-Type": "image/jpeg"}, mode="chunked" if chunked else "normal")


# (state, request target with query, path segments after the first, parsed query) -> reply
Route = Callable[[ServerState, str, list[str], dict[str, list[str]]], Reply]

ROUTES: dict[str, Route] = {
    "ok": lambda s, p, a, q: _image(s, a[0]),
    "hold": _hold,
    "404": lambda s, p, a, q: Reply(404, b"not found"),
    "status": lambda s, p, a, q: Reply(int(a[0]), b"status"),
    "500-then-ok": _fail_once(500, {}),
    "429": _fail_once(429, {"Retry-After": "1"}),
    "slow-connect": lambda s, p, a, q: Reply(200, mode="hang"),
    "drip": _drip,
    "truncated": _truncated,
    "html": lambda s, p, a, q: Reply(200, HTML_PAGE, {"Content-Type": "text/html; charset=utf-8"}),
    "corrupt.jpg": lambda s, p, a, q: Reply(200, corrupt_jpeg(), {"Content-Type": "image/jpeg"}),
    "bomb.png": lambda s, p, a, q: Reply(200, bomb_png(), {"Content-Type": "image/png"}),
    "redirect-loop": lambda s, p, a, q: Reply(302, b"", {"Location": "/redirect-loop"}),
    "redirect": _redirect,
    "redirect-to": lambda s, p, a, q: Reply(302, b"", {"Location": (q.get("url") or [""])[0]}),
    "noai": lambda s, p, a, q: _image(s, a[0], **{"X-Robots-Tag": "noai"}),
    "big.jpg": lambda s, p, a, q: _big(s, p, a, q, chunked=False),
    "big-chunked.jpg": lambda s, p, a, q: _big(s, p, a, q, chunked=True),
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real image hosts do; every reply carries a length or is chunked
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class names it so
        pass

    def do_GET(self) -> None:
        state = self.server.state
        split = urlsplit(self.path)
        path, query = split.path, parse_qs(split.query)
        head, *rest = (unquote(part) for part in path.lstrip("/").split("/"))
        prefix = "/" + head
        with state.cond:
            state.hits[path] += 1
            state.hits_by_url[self.path] += 1
            state.request_times.setdefault(path, []).append(time.monotonic())
            state.user_agents.append(self.headers.get("User-Agent", ""))
            state.hosts.append(self.headers.get("Host", ""))
            state.in_flight[prefix] += 1
            state.max_concurrent[prefix] = max(state.max_concurrent[prefix], state.in_flight[prefix])
            state.cond.notify_all()
        try:
            route = ROUTES.get(head)
            try:
                reply = route(state, self.path, rest, query) if route else Reply(404, b"no such route")
            except (IndexError, ValueError):
                reply = Reply(400, b"bad fault path")
        finally:
            # Leave before the body goes out: a client can only start its next request after reading this reply,
            # so the recorded peak never counts a request the client already considers finished.
            with state.cond:
                state.in_flight[prefix] -= 1
        try:
            self._send(reply, state)
        except OSError:  # the client gave up (timeout, cap reached): that is the point of most faults
            self.close_connection = True

    def _send(self, reply: Reply, state: ServerState) -> None:
        if reply.mode == "hang":
            state.stopping.wait(state.hang_seconds)
            self.close_connection = True
            return
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        if reply.mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(reply.body), 8192):
                piece = reply.body[i : i + 8192]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        declared = len(reply.body) + (1000 if reply.mode == "truncated" else 0)
        self.send_header("Content-Length", str(declared))
        self.end_headers()
        if reply.mode == "drip":
            for i in range(len(reply.body)):
                self.wfile.write(reply.body[i : i + 1])
                self.wfile.flush()
                if state.stopping.wait(reply.drip_every):
                    break
            self.close_connection = True
            return
        self.wfile.write(reply.body)
        if reply.mode == "truncated":
            self.wfile.flush()
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # a small listen backlog drops SYNs under a burst and fakes connect timeouts
    state: ServerState

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up mid-request is what the faults provoke; the default prints a traceback


class FaultServer:
    """The fault-injecting server as a context manager yielding itself: `url`, `hits`, `max_concurrent`, ...

    `drip_every`: default seconds between the bytes of /drip; `hold_seconds`: longest wait of /hold;
    `hang_seconds`: how long /slow-connect keeps a connection silent (cut short when the server stops).
    """

    def __init__(
        self,
        images: dict[str, bytes],
        *,
        big_size: int = 300_000,
        drip_every: float = 1.0,
        hold_seconds: float = 5.0,
        hang_seconds: float = 30.0,
    ) -> None:
        self.state = ServerState(dict(images), big_size, drip_every, hold_seconds, hang_seconds)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    @property
    def hits(self) -> Counter[str]:
        """Requests received per path (query string excluded)."""
        return self.state.hits

    @property
    def max_concurrent(self) -> Counter[str]:
        """Peak requests held at once per first path segment, e.g. `max_concurrent['/hold']`.

        Counted from arrival until the reply starts: only /hold keeps requests long enough to measure a client's
        concurrency.
        """
        return self.state.max_concurrent

    @property
    def user_agents(self) -> list[str]:
        """The User-Agent header of every request, in arrival order."""
        return self.state.user_agents

    @property
    def hosts(self) -> list[str]:
        """The Host header of every request, in arrival order."""
        return self.state.hosts

    def request_times(self, path: str) -> list[float]:
        """`time.monotonic()` at each arrival of a request for `path`."""
        return list(self.state.request_times.get(path, []))

    def __enter__(self) -> FaultServer:
        bomb_png(), corrupt_jpeg()  # built once per process, before a first request could outlast a short timeout
        server = _Server(("127.0.0.1", 0), _Handler)
        server.state = self.state
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fault-server", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self.state.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@contextmanager
def fault_server(images: dict[str, bytes], **kwargs: float) -> Iterator[str]:
    """Serve `images` with the fault routes above on 127.0.0.1; yields the base URL (`http://127.0.0.1:PORT`)."""
    with FaultServer(images, **kwargs) as server:
        yield server.url


@contextmanager
def stalled_listener() -> Iterator[str]:
    """A base URL whose TCP connects time out for real: a listening socket that never accepts, its backlog full.

    Linux drops a SYN when the listener's accept queue is full, so the client's connect hangs until its own connect
    timeout, exactly as with an unreachable host, without leaving 127.0.0.1.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        for _ in range(8):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.settimeout(0.2)
            try:
                probe.connect(address)
            except OSError:
                probe.close()
                break
            fillers.append(probe)
        yield f"http://127.0.0.1:{address[1]}"
    finally:
        for sock in fillers:
            sock.close()
        listener.close()
