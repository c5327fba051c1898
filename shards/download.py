"""Fetch the image bytes of many records at once; every item ends in exactly one `Fetched`, failures included.

A string item is a URL column's value: http(s) only (`shards.policy.url_error`), with timeouts, retries, redirects
(http(s) only too), a size cap, X-Robots-Tag, a per-host cap, and the address policy checked on every connection
(`shards.guarded`). A `LocalImage` is a file named relative to a source's image root, read by `shards.local`.

Pixel limits and content checks (HTML served as an image, corrupt JPEGs) belong to the image stage, not here.
"""

from __future__ import annotations

import email.utils
import queue
import random
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3 import exceptions as ux

from shards.guarded import AddressRefused, guarded_pool_manager
from shards.local import LocalImage, LocalReadError, is_object_store, read_image_file
from shards.options import DownloadOptions
from shards.policy import URL_SCHEMES, AddressPolicy, url_error

USER_AGENT = "tinymix/0.1 (+https://github.com/tinymix)"
ROBOTS_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
MAX_RETRY_AFTER = 30.0
# read_timeout bounds the silence between two reads; this bounds a whole attempt, so a server that dribbles a byte
# just inside the read timeout cannot hold a worker for hours.
ATTEMPT_DEADLINE_READ_TIMEOUTS = 6
CHUNK = 1 << 16
CLOSED = "Downloader is closed (close() ran while fetch_many was still being iterated?)"
LOOKAHEAD_PER_THREAD = 8  # items pulled ahead of the workers, so a saturated host does not idle the pool


@dataclass
class Fetched:
    """The outcome of fetching one item.

    `error` is a short stable reason (`http 404`, `timeout: read`, `too large: > N bytes`, `x-robots-tag: noai`,
    `scheme not allowed: ftp`, `address not allowed: 10.0.0.1 is private ...`, `too many redirects`,
    `truncated body`, `missing file: PATH`, `outside image_root: PATH`, ...) and None on success.
    `final_url` is the URL after redirects (the path for local files); `nbytes` the body bytes received.
    """

    ok: bool
    data: bytes | None
    error: str | None
    status_code: int | None
    final_url: str | None
    attempts: int
    nbytes: int

    @classmethod
    def fail(
        cls,
        error: str,
        *,
        status_code: int | None = None,
        final_url: str | None = None,
        attempts: int = 1,
        nbytes: int = 0,
    ) -> Fetched:
        return cls(False, None, error, status_code, final_url, attempts, nbytes)


def user_agent(token: str | None) -> str:
    """The User-Agent header: ours, then the user's identifying token."""
    return f"{USER_AGENT} {token}" if token else USER_AGENT


def route(item: object) -> tuple[str, str]:
    """Where an item is read from: `("http", host:port)`, `("file", path)`, `("fsspec", url)` or `("reject", error)`.

    Only a `LocalImage` is ever read from storage; a string is a URL and must be http(s).
    """
    if isinstance(item, LocalImage):
        return ("fsspec" if is_object_store(item.path) else "file"), item.path
    if not isinstance(item, str) or not item.strip():
        return "reject", "empty url" if isinstance(item, str) else f"bad url: {type(item).__name__}"
    error = url_error(item)
    if error:
        return "reject", error
    parts = urlsplit(item)
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        return "reject", "bad url: port"
    if not parts.hostname:
        return "reject", "bad url: no host"
    return "http", f"{parts.hostname}:{port}"


_UA_PREFIX = re.compile(r"^\s*([A-Za-z0-9_.*-]+)\s*:\s*(.*)$")
_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})


def robots_block(values: Iterable[str], token: str | None) -> str | None:
    """The X-Robots-Tag directive that forbids us this image, or None.

    Unprefixed directives apply to everyone. `NAME: directives` applies only when NAME is `tinymix` or the user's
    token (case-insensitive), as Google's X-Robots-Tag rules and img2dataset do: `googlebot: noindex` is not for us.
    """
    ours = {"tinymix"} | ({token.lower()} if token else set())
    for value in values:
        match = _UA_PREFIX.match(value)
        agent = None
        if match and match.group(1).lower() not in _VALUED_DIRECTIVES:
            agent, value = match.group(1).lower(), match.group(2)
        if agent is not None and agent not in ours:
            continue
        for directive in value.split(","):
            if directive.strip().lower() in ROBOTS_DIRECTIVES:
                return directive.strip().lower()
    return None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), capped at MAX_RETRY_AFTER."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return min(max(0.0, when - (time.time() if now is None else now)), MAX_RETRY_AFTER)


def retry_delay(attempt: int, backoff: float, retry_after: float | None, jitter: float) -> float:
    """Seconds before the next try after failed attempt number `attempt` (0-based); `jitter` is uniform(0.5, 1.5)."""
    if retry_after is not None:
        return retry_after
    return backoff * 2**attempt * jitter


# (exception type, error, retried?) — first match wins, so subclasses come before their bases: in urllib3 2,
# NameResolutionError < NewConnectionError < ConnectTimeoutError.
_ERRORS: tuple[tuple[type[BaseException], str, bool], ...] = (
    # A name that does not resolve is nearly always a dead domain (common in LAION): retrying only burns time.
    (ux.NameResolutionError, "dns: cannot resolve host", False),
    (ux.NewConnectionError, "connection failed", True),
    (ux.ConnectTimeoutError, "timeout: connect", True),
    (ux.ReadTimeoutError, "timeout: read", True),
    (ux.SSLError, "ssl error", False),
    (ux.LocationValueError, "bad url", False),
    (ux.IncompleteRead, "truncated body", True),
    (ux.ProtocolError, "connection broken", True),
    (ux.DecodeError, "content decoding failed", False),
    (ux.HTTPError, "http error", False),
    (OSError, "connection failed", True),
)


def classify(exc: BaseException) -> tuple[str, bool]:
    """The stable error string for a client exception and whether it is worth retrying."""
    if isinstance(exc, ux.ProtocolError) and any(isinstance(a, ux.IncompleteRead) for a in exc.args):
        return "truncated body", True
    for kind, error, retried in _ERRORS:
        if isinstance(exc, kind):
            return error, retried
    return f"error: {type(exc).__name__}", False


@dataclass
class _Attempt:
    fetched: Fetched
    retried: bool = False
    retry_after: float | None = None


Item = str | LocalImage
_Job = tuple[int, str, str, Item]  # row, kind, target, item


class _HostScheduler:
    """Which queued jobs may start: at most `threads` running, at most `per_host` on one host (host None: no cap).

    Jobs wait here rather than in a worker holding a per-host semaphore, so a busy host never ties up threads that
    other hosts' jobs could use.
    """

    def __init__(self, threads: int, per_host: int) -> None:
        self.threads, self.per_host = threads, per_host
        self.waiting: dict[str | None, deque[_Job]] = {}
        self.in_flight: Counter[str | None] = Counter()
        self.queued = 0
        self.running = 0

    def add(self, host: str | None, job: _Job) -> None:
        self.waiting.setdefault(host, deque()).append(job)
        self.queued += 1

    def start(self) -> Iterator[tuple[str | None, _Job]]:
        """Pop every job that may start now, oldest host first, counting it as running."""
        for host in list(self.waiting):
            if self.running >= self.threads:
                return
            jobs = self.waiting[host]
            while jobs and self.running < self.threads and (host is None or self.in_flight[host] < self.per_host):
                self.queued -= 1
                self.running += 1
                self.in_flight[host] += 1
                yield host, jobs.popleft()
            if not jobs:
                del self.waiting[host]

    def finish(self, host: str | None) -> None:
        self.running -= 1
        self.in_flight[host] -= 1
        if not self.in_flight[host]:
            del self.in_flight[host]  # a LAION shard touches thousands of hosts once each


class Downloader:
    """Fetch many items concurrently: `options.threads` workers, at most `options.per_host` of them on one host.

    One `fetch_many` at a time per Downloader (the per-host cap is counted per call). Thread-safe urllib3 pool shared by
    the workers; close() (or leaving the `with` block) stops retries that are waiting and joins the workers.
    """

    def __init__(self, options: DownloadOptions) -> None:
        self.options = options
        self._timeout = urllib3.Timeout(connect=options.connect_timeout, read=options.read_timeout)
        self._deadline = options.connect_timeout + ATTEMPT_DEADLINE_READ_TIMEOUTS * options.read_timeout
        policy = AddressPolicy.from_options(options.allow_private, options.allow_hosts)
        self._http = guarded_pool_manager(
            policy,
            num_pools=max(64, 2 * options.threads),
            maxsize=options.per_host,
            block=False,
            headers={"User-Agent": user_agent(options.user_agent_token)},
        )
        self._pool = ThreadPoolExecutor(max_workers=options.threads, thread_name_prefix="tinymix-download")
        self._closing = threading.Event()
        self._rng = random.Random()

    def __enter__(self) -> Downloader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Wake waiting retries, drop queued work, join the workers and close pooled connections."""
        self._closing.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._http.clear()

    def fetch(self, item: Item) -> Fetched:
        """Fetch one item in the calling thread (no per-host cap)."""
        kind, target = route(item)
        return self._fetch(kind, target, item)

    def fetch_many(self, items: Iterable[tuple[int, Item]]) -> Iterator[tuple[int, Fetched]]:
        """Yield `(row, Fetched)` for every `(row, url or LocalImage)` exactly once, in completion order.

        Never raises for one item. Items are pulled lazily, at most `LOOKAHEAD_PER_THREAD * threads` ahead of the
        results; rejected items (unknown scheme, empty) are yielded at once with `attempts=0`.
        """
        lookahead = LOOKAHEAD_PER_THREAD * self.options.threads
        source = iter(items)
        exhausted = False
        jobs = _HostScheduler(self.options.threads, self.options.per_host)
        done: queue.SimpleQueue[tuple[int, str | None, Fetched]] = queue.SimpleQueue()
        abandoned = threading.Event()

        def work(row: int, host: str | None, kind: str, target: str, item: Item) -> None:
            if abandoned.is_set():
                return
            try:
                fetched = self._fetch(kind, target, item)
            except Exception as exc:  # a bug here must cost one item, never the shard
                fetched = Fetched.fail(f"internal error: {type(exc).__name__}: {exc}", final_url=target)
            done.put((row, host, fetched))

        try:
            while True:
                if self._closing.is_set():
                    raise RuntimeError(CLOSED)
                while not exhausted and jobs.queued < lookahead:
                    try:
                        row, item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    kind, target = route(item)
                    if kind == "reject":
                        yield row, Fetched.fail(target, final_url=item if isinstance(item, str) else None, attempts=0)
                        continue
                    jobs.add(target if kind == "http" else None, (row, kind, target, item))
                for host, (row, kind, target, item) in jobs.start():
                    self._pool.submit(work, row, host, kind, target, item)
                if jobs.running == 0:
                    assert exhausted and jobs.queued == 0, "items queued with nothing running"
                    return
                while True:  # one blocking get, then whatever else has finished meanwhile
                    row, host, fetched = self._next_done(done)
                    jobs.finish(host)
                    yield row, fetched
                    if done.empty():
                        break
        finally:
            abandoned.set()

    def _next_done(self, done: queue.SimpleQueue[tuple[int, str | None, Fetched]]) -> tuple[int, str | None, Fetched]:
        while True:
            try:
                return done.get(timeout=1.0)
            except queue.Empty:
                # close() cancels queued work, whose results would never come: fail loudly instead of hanging
                if self._closing.is_set():
                    raise RuntimeError(CLOSED) from None

    def _fetch(self, kind: str, target: str, item: Item) -> Fetched:
        if kind == "http" and isinstance(item, str):
            return self._fetch_http(item)
        if kind in ("file", "fsspec") and isinstance(item, LocalImage):
            return self._read_local(item)
        return Fetched.fail(target, final_url=item if isinstance(item, str) else None, attempts=0)

    def _fetch_http(self, url: str) -> Fetched:
        attempt = 0
        while True:
            outcome = self._attempt(url)
            fetched = replace(outcome.fetched, attempts=attempt + 1)
            if fetched.ok or not outcome.retried or attempt >= self.options.retries:
                return fetched
            delay = retry_delay(attempt, self.options.backoff, outcome.retry_after, self._rng.uniform(0.5, 1.5))
            if self._closing.wait(delay):
                return fetched
            attempt += 1

    def _attempt(self, url: str) -> _Attempt:
        """One try: follow redirects, check headers, stream the body under the size cap and the attempt deadline."""
        deadline = time.monotonic() + self._deadline
        current = url
        for _ in range(self.options.max_redirects + 1):
            try:
                resp = self._http.request(
                    "GET", current, preload_content=False, redirect=False, retries=False, timeout=self._timeout
                )
            except AddressRefused as exc:  # refused before connecting: nothing was sent, retrying cannot help
                return _Attempt(Fetched.fail(str(exc), final_url=current))
            except Exception as exc:
                error, retried = classify(exc)
                return _Attempt(Fetched.fail(error, final_url=current), retried)
            status = resp.status
            if status in REDIRECT_CODES:
                location = resp.headers.get("Location")
                _discard(resp)
                if not location:
                    return _Attempt(Fetched.fail("redirect without location", status_code=status, final_url=current))
                current = urljoin(current, location.strip())
                scheme = urlsplit(current).scheme.lower()
                if scheme not in URL_SCHEMES:
                    return _Attempt(
                        Fetched.fail(f"scheme not allowed: {scheme}", status_code=status, final_url=current)
                    )
                continue
            if status == 429 or status >= 500:
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                _discard(resp)
                return _Attempt(
                    Fetched.fail(f"http {status}", status_code=status, final_url=current), True, retry_after
                )
            if not 200 <= status < 300:
                _discard(resp)
                return _Attempt(Fetched.fail(f"http {status}", status_code=status, final_url=current))
            if self.options.respect_robots:
                blocked = robots_block(resp.headers.getlist("X-Robots-Tag"), self.options.user_agent_token)
                if blocked:
                    _discard(resp)
                    return _Attempt(Fetched.fail(f"x-robots-tag: {blocked}", status_code=status, final_url=current))
            return self._read_body(resp, current, deadline)
        return _Attempt(Fetched.fail("too many redirects", final_url=current))

    def _read_body(self, resp: urllib3.BaseHTTPResponse, url: str, deadline: float) -> _Attempt:
        max_bytes = self.options.max_bytes
        too_large = f"too large: > {max_bytes} bytes"
        declared = resp.headers.get("Content-Length", "").strip()
        expected = int(declared) if declared.isdigit() else None
        if expected is not None and expected > max_bytes:
            _discard(resp)
            return _Attempt(Fetched.fail(too_large, status_code=resp.status, final_url=url))
        body = bytearray()
        try:
            while True:
                piece = resp.read1(CHUNK)  # returns what has arrived, so the deadline is checked between reads
                if not piece:
                    break
                body += piece
                if len(body) > max_bytes:
                    _discard(resp)
                    return _Attempt(Fetched.fail(too_large, status_code=resp.status, final_url=url, nbytes=len(body)))
                if time.monotonic() > deadline:
                    _discard(resp)
                    fetched = Fetched.fail("timeout: total", status_code=resp.status, final_url=url, nbytes=len(body))
                    return _Attempt(fetched, True)
        except Exception as exc:
            _discard(resp)
            error, retried = classify(exc)
            return _Attempt(Fetched.fail(error, status_code=resp.status, final_url=url, nbytes=len(body)), retried)
        resp.release_conn()
        identity = resp.headers.get("Content-Encoding", "identity").strip().lower() in ("", "identity")
        if expected is not None and identity and len(body) != expected:
            return _Attempt(
                Fetched.fail("truncated body", status_code=resp.status, final_url=url, nbytes=len(body)), True
            )
        return _Attempt(Fetched(True, bytes(body), None, resp.status, url, 1, len(body)))

    def _read_local(self, image: LocalImage) -> Fetched:
        try:
            data = read_image_file(image, self.options.max_bytes, self.options.read_timeout)
        except LocalReadError as e:
            return Fetched.fail(str(e), final_url=image.path)
        return Fetched(True, data, None, None, image.path, 1, len(data))


def _discard(resp: urllib3.BaseHTTPResponse) -> None:
    """Abandon a response: close its connection (draining an unwanted body could take long), return it to the pool."""
    resp.close()
    resp.release_conn()
