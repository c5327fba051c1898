"""The downloader against the fault-injecting server: errors, attempt counts, caps, robots, local and s3 reads.

The server is on 127.0.0.1, so these downloads opt in with `allow_private` (test_policy.py shows the refusal).
"""

from __future__ import annotations

import email.utils
import io
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from shards.download import (
    LOOKAHEAD_PER_THREAD,
    USER_AGENT,
    Downloader,
    Fetched,
    _HostScheduler,
    parse_retry_after,
    retry_delay,
    robots_block,
    route,
)
from shards.http_faults import HTML_PAGE, FaultServer, bomb_png, corrupt_jpeg, stalled_listener
from shards.local import LocalImage
from shards.options import DownloadOptions

IMAGES = {
    "a.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 20,
    "b.png": b"\x89PNG\r\n\x1a\n" + b"p" * 999,
    "straße café.jpg": b"\xff\xd8unicode",
}
FAST = dict(connect_timeout=0.3, read_timeout=0.3, backoff=0.01, retries=1, threads=8, allow_private=True)


def options(**overrides: object) -> DownloadOptions:
    return DownloadOptions(**{**FAST, **overrides})


def fetch_one(opts: DownloadOptions, url: str) -> Fetched:
    with Downloader(opts) as downloader:
        results = list(downloader.fetch_many([(7, url)]))
    assert [row for row, _ in results] == [7]
    return results[0][1]


@pytest.fixture
def server():
    with FaultServer(IMAGES, drip_every=1.0) as s:
        yield s


# path, options overrides, ok, error, attempts, requests the server saw for that path, expected body
FAULTS = [
    ("/ok/a.jpg", {}, True, None, 1, 1, IMAGES["a.jpg"]),
    ("/ok/nope.jpg", {}, False, "http 404", 1, 1, None),
    ("/404", {"retries": 3}, False, "http 404", 1, 1, None),
    ("/status/403", {"retries": 3}, False, "http 403", 1, 1, None),
    ("/status/410", {"retries": 3}, False, "http 410", 1, 1, None),
    ("/status/503", {"retries": 3}, False, "http 503", 4, 4, None),
    ("/status/500", {"retries": 0}, False, "http 500", 1, 1, None),
    ("/500-then-ok/a.jpg", {}, True, None, 2, 2, IMAGES["a.jpg"]),
    ("/500-then-ok/a.jpg", {"retries": 0}, False, "http 500", 1, 1, None),
    ("/slow-connect", {}, False, "timeout: read", 2, 2, None),
    ("/drip/a.jpg", {}, False, "timeout: read", 2, 2, None),
    ("/truncated/a.jpg", {}, False, "truncated body", 2, 2, None),
    ("/html", {}, True, None, 1, 1, HTML_PAGE),
    ("/corrupt.jpg", {}, True, None, 1, 1, corrupt_jpeg()),
    ("/bomb.png", {}, True, None, 1, 1, bomb_png()),
    ("/redirect-loop", {"max_redirects": 4}, False, "too many redirects", 1, 5, None),
    ("/redirect/3/b.png", {"max_redirects": 3}, True, None, 1, 1, IMAGES["b.png"]),
    ("/redirect/4/b.png", {"max_redirects": 3}, False, "too many redirects", 1, 1, None),
    ("/noai/a.jpg", {}, False, "x-robots-tag: noai", 1, 1, None),
    ("/noai/a.jpg", {"respect_robots": False}, True, None, 1, 1, IMAGES["a.jpg"]),
    ("/big.jpg", {"max_bytes": 100_000}, False, "too large: > 100000 bytes", 1, 1, None),
    ("/big-chunked.jpg", {"max_bytes": 100_000}, False, "too large: > 100000 bytes", 1, 1, None),
    ("/big.jpg", {"max_bytes": 300_000}, True, None, 1, 1, b"\xff\xd8" + bytes(299_998)),
    ("/big-chunked.jpg", {"max_bytes": 300_000}, True, None, 1, 1, b"\xff\xd8" + bytes(299_998)),
    ("/bomb.png", {"max_bytes": 50_000}, False, "too large: > 50000 bytes", 1, 1, None),
]


@pytest.mark.parametrize(("path", "overrides", "ok", "error", "attempts", "hits", "body"), FAULTS)
def test_each_fault_gives_its_error_and_attempts(server, path, overrides, ok, error, attempts, hits, body):
    fetched = fetch_one(options(**overrides), server.url + path)
    assert (fetched.ok, fetched.error, fetched.attempts) == (ok, error, attempts)
    assert server.hits[path] == hits
    assert fetched.data == body
    if ok:
        assert fetched.nbytes == len(body) and fetched.status_code == 200


def test_attempt_deadline_stops_a_drip_inside_the_read_timeout(server):
    # a byte every 0.05 s never trips the 0.2 s read timeout; the attempt deadline (0.1 + 6 * 0.2 s) does
    opts = options(connect_timeout=0.1, read_timeout=0.2, retries=0)
    fetched = fetch_one(opts, server.url + "/drip/b.png?every=0.05")
    assert (fetched.ok, fetched.error, fetched.attempts) == (False, "timeout: total", 1)
    assert 0 < fetched.nbytes < len(IMAGES["b.png"])


def test_unencoded_urls_are_quoted_on_the_wire(server):
    fetched = fetch_one(options(), server.url + "/ok/straße café.jpg")
    assert (fetched.ok, fetched.data) == (True, IMAGES["straße café.jpg"])


def test_iterating_after_close_raises_instead_of_hanging(server):
    downloader = Downloader(options(threads=1))
    stream = downloader.fetch_many((i, f"{server.url}/ok/a.jpg?i={i}") for i in range(50))
    next(stream)
    downloader.close()
    with pytest.raises(RuntimeError, match="closed"):
        list(stream)


def test_redirects_report_final_url_and_count_each_hop(server):
    fetched = fetch_one(options(), server.url + "/redirect/2/a.jpg")
    assert fetched.final_url == server.url + "/redirect/0/a.jpg"
    assert [server.hits[f"/redirect/{n}/a.jpg"] for n in (2, 1, 0)] == [1, 1, 1]


def test_size_cap_without_content_length_stops_streaming(server):
    fetched = fetch_one(options(max_bytes=100_000), server.url + "/big-chunked.jpg")
    assert 100_000 < fetched.nbytes <= 100_000 + 65536 and fetched.data is None


def test_declared_size_over_cap_is_refused_before_reading(server):
    assert fetch_one(options(max_bytes=100_000), server.url + "/big.jpg").nbytes == 0


def test_429_waits_for_retry_after(server):
    fetched = fetch_one(options(backoff=0.0), server.url + "/429/a.jpg")
    assert (fetched.ok, fetched.attempts) == (True, 2)
    first, second = server.request_times("/429/a.jpg")
    assert second - first >= 0.95  # backoff is 0: only the server's Retry-After: 1 can explain the gap


def test_backoff_grows_exponentially(server):
    fetch_one(options(retries=2, backoff=0.2), server.url + "/status/502")
    t0, t1, t2 = server.request_times("/status/502")
    assert t1 - t0 >= 0.2 * 1 * 0.5 and t2 - t1 >= 0.2 * 2 * 0.5


def test_true_connect_timeout():
    with stalled_listener() as url:
        fetched = fetch_one(options(), url + "/a.jpg")
    assert (fetched.error, fetched.attempts, fetched.status_code) == ("timeout: connect", 2, None)


def test_connection_refused_is_retried():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    fetched = fetch_one(options(), f"http://127.0.0.1:{port}/a.jpg")
    assert (fetched.error, fetched.attempts) == ("connection failed", 2)


def test_user_agent_and_token_reach_the_server(server):
    fetch_one(options(user_agent_token="acme-research-bot"), server.url + "/ok/a.jpg")
    fetch_one(options(), server.url + "/ok/b.png")
    assert server.user_agents == [f"{USER_AGENT} acme-research-bot", USER_AGENT]
    assert USER_AGENT == "tinymix/0.1 (+https://github.com/tinymix)"


def test_many_items_each_yielded_exactly_once(server, tmp_path):
    local = tmp_path / "local.jpg"
    local.write_bytes(b"local bytes")
    kinds = {
        0: (server.url + "/ok/a.jpg", (True, None, 1)),
        1: (server.url + "/404", (False, "http 404", 1)),
        2: (LocalImage(str(local), str(tmp_path)), (True, None, 1)),
        3: (
            LocalImage(str(tmp_path / "gone.jpg"), str(tmp_path)),
            (False, f"missing file: {tmp_path / 'gone.jpg'}", 1),
        ),
        4: ("ftp://example.org/a.jpg", (False, "scheme not allowed: ftp", 0)),
        5: (server.url + "/500-then-ok/b.png", (True, None, 2)),
    }
    items = []
    for row in range(300):
        url = kinds[row % 6][0]
        items.append((row, url + f"?r={row}" if row % 6 == 5 else url))  # a fresh URL each: fails once per path
    with Downloader(options(threads=16, per_host=4)) as downloader:
        results = list(downloader.fetch_many(items))
    assert sorted(row for row, _ in results) == list(range(300))
    for row, fetched in results:
        assert (fetched.ok, fetched.error, fetched.attempts) == kinds[row % 6][1], row
    assert server.hits["/ok/a.jpg"] == 50 and server.hits["/404"] == 50
    # one path, 50 distinct URLs (query strings), each failing once
    assert server.hits["/500-then-ok/b.png"] == 100


def test_per_host_cap_is_respected_and_reached():
    # /hold answers only once n requests are in flight, so the peak is >= 3 by construction; the cap makes it <= 3.
    with FaultServer(IMAGES) as one, FaultServer(IMAGES) as two:
        servers = (one, two)
        items = [(i, f"{servers[i % 2].url}/hold/a.jpg?n=3&i={i}") for i in range(24)]
        with Downloader(options(threads=16, per_host=3, read_timeout=10.0)) as downloader:
            results = list(downloader.fetch_many(items))
        assert sorted(row for row, _ in results) == list(range(24)) and all(f.ok for _, f in results)
        assert (one.max_concurrent["/hold"], two.max_concurrent["/hold"]) == (3, 3)


def test_without_the_cap_a_host_gets_more():
    with FaultServer(IMAGES, hold_seconds=1.0) as one:
        items = [(i, f"{one.url}/hold/a.jpg?n=6&i={i}") for i in range(12)]
        with Downloader(options(threads=6, per_host=6, read_timeout=10.0)) as downloader:
            assert all(f.ok for _, f in downloader.fetch_many(items))
        assert one.max_concurrent["/hold"] == 6


def test_local_images_and_file_urls_under_their_root(tmp_path):
    image = tmp_path / "dir with space" / "x.jpg"
    image.parent.mkdir()
    image.write_bytes(b"jpeg!")
    root = str(tmp_path)
    items = [
        (0, LocalImage(str(image), root)),
        (1, LocalImage(image.as_uri(), tmp_path.as_uri())),
        (2, LocalImage(str(tmp_path / "nope.jpg"), root)),
        (3, LocalImage(str(image.parent), root)),
        (4, "ftp://host/x.jpg"),
        (5, ""),
        (6, str(image)),  # a string is a URL column's value: never read from disk
        (7, image.as_uri()),
    ]
    with Downloader(options(max_bytes=4)) as small, Downloader(options()) as downloader:
        got = dict(downloader.fetch_many(items))
        too_big = small.fetch(LocalImage(str(image), root))
    assert (got[0].ok, got[0].data, got[0].final_url, got[0].nbytes) == (True, b"jpeg!", str(image), 5)
    assert (got[1].ok, got[1].data) == (True, b"jpeg!")
    assert got[2].error == f"missing file: {tmp_path / 'nope.jpg'}"
    assert got[3].error == f"not a regular file: {image.parent} is a directory"
    assert (got[4].error, got[4].attempts) == ("scheme not allowed: ftp", 0)
    assert got[5].error == "empty url"
    assert (got[6].error, got[6].attempts) == (
        "scheme not allowed: none (a local path; only http and https URLs are fetched)",
        0,
    )
    assert (got[7].error, got[7].attempts) == ("scheme not allowed: file", 0)
    assert too_big.error == "too large: > 4 bytes"


def test_results_stream_and_input_is_pulled_lazily(tmp_path):
    local = tmp_path / "x.jpg"
    local.write_bytes(b"x")
    pulled = 0

    def source():
        nonlocal pulled
        for row in range(100_000):
            pulled += 1
            yield row, LocalImage(str(local), str(tmp_path))

    threads = 4
    with Downloader(options(threads=threads)) as downloader:
        stream = downloader.fetch_many(source())
        first = [next(stream) for _ in range(10)]
        stream.close()
    assert len({row for row, _ in first}) == 10
    assert pulled <= LOOKAHEAD_PER_THREAD * threads + threads + 10


def test_close_wakes_a_waiting_retry(server):
    downloader = Downloader(options(retries=1, backoff=60.0))
    result: list[Fetched] = []
    worker = threading.Thread(target=lambda: result.append(downloader.fetch(server.url + "/status/503")))
    worker.start()
    for _ in range(500):
        if server.hits["/status/503"]:
            break
        time.sleep(0.01)
    downloader.close()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert (result[0].error, result[0].attempts, server.hits["/status/503"]) == ("http 503", 1, 1)


def test_s3_urls_go_through_fsspec(monkeypatch):
    import fsspec
    import s3fs
    from moto.server import ThreadedMotoServer

    for key, value in dict(
        AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1"
    ).items():
        monkeypatch.setenv(key, value)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        endpoint = f"http://127.0.0.1:{moto.get_host_and_port()[1]}"
        monkeypatch.setitem(fsspec.config.conf, "s3", {"client_kwargs": {"endpoint_url": endpoint}})
        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem()
        fs.mkdir("bucket")
        fs.pipe("bucket/img/a.jpg", IMAGES["a.jpg"])
        with Downloader(options()) as downloader:
            items = [
                (0, LocalImage("s3://bucket/img/a.jpg", "s3://bucket/img")),
                (1, LocalImage("s3://bucket/img/missing.jpg", "s3://bucket/img")),
                (2, LocalImage("s3://bucket/img/../other/a.jpg", "s3://bucket/img")),
                (3, "s3://bucket/img/a.jpg"),  # from a URL column: the builder's credentials are not lent to rows
            ]
            got = dict(downloader.fetch_many(items))
        assert (got[0].ok, got[0].data) == (True, IMAGES["a.jpg"])
        assert got[1].error == "missing file: s3://bucket/img/missing.jpg"
        assert got[2].error == "outside image_root: s3://bucket/img/../other/a.jpg"
        assert (got[3].error, got[3].attempts) == ("scheme not allowed: s3", 0)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        moto.stop()


def test_scheduler_caps_hosts_and_threads_and_refills_in_order():
    jobs = _HostScheduler(threads=4, per_host=2)
    for i, host in enumerate(["a", "a", "a", "b", None, None, "b", "a"]):
        jobs.add(host, (i, "http", str(host), str(i)))
    assert [job[0] for _, job in jobs.start()] == [0, 1, 3, 6]  # a capped at 2, b at 2, then 4 threads busy
    assert list(jobs.start()) == []
    jobs.finish("a")
    assert [job[0] for _, job in jobs.start()] == [2]  # a's freed slot goes to a's next job
    jobs.finish("b")
    assert [job[0] for _, job in jobs.start()] == [4]  # b has nothing queued: the thread goes to the uncapped jobs
    for host in ["a", "a", "b", None]:
        jobs.finish(host)
    assert [job[0] for _, job in jobs.start()] == [7, 5] and (jobs.queued, jobs.running) == (0, 2)


LOCAL_PATH_NOTE = "a local path; only http and https URLs are fetched"
ROUTES = [
    ("http://Example.org/a.jpg", ("http", "example.org:80")),
    ("https://example.org:8443/a.jpg", ("http", "example.org:8443")),
    ("HTTPS://example.org/a.jpg", ("http", "example.org:443")),
    ("/data/coco/train2017/1.jpg", ("reject", f"scheme not allowed: none ({LOCAL_PATH_NOTE})")),
    ("coco/1.jpg", ("reject", f"scheme not allowed: none ({LOCAL_PATH_NOTE})")),
    ("C:\\data\\1.jpg", ("reject", f"scheme not allowed: none ({LOCAL_PATH_NOTE})")),
    ("file:///data/a%20b.jpg", ("reject", "scheme not allowed: file")),
    ("s3://bucket/key.jpg", ("reject", "scheme not allowed: s3")),
    ("gs://bucket/key.jpg", ("reject", "scheme not allowed: gs")),
    ("javascript:alert(1)", ("reject", "scheme not allowed: javascript")),
    (LocalImage("/data/coco/1.jpg", "/data"), ("file", "/data/coco/1.jpg")),
    (LocalImage("file:///data/a%20b.jpg", None), ("file", "file:///data/a%20b.jpg")),
    (LocalImage("s3://bucket/key.jpg", "s3://bucket"), ("fsspec", "s3://bucket/key.jpg")),
    ("ftp://example.org/a.jpg", ("reject", "scheme not allowed: ftp")),
    ("data:image/png;base64,xyz", ("reject", "scheme not allowed: data")),
    ("http:///a.jpg", ("reject", "bad url: no host")),
    ("http://example.org:99999999/a.jpg", ("reject", "bad url: port")),
    ("  ", ("reject", "empty url")),
    (None, ("reject", "bad url: NoneType")),
]


@pytest.mark.parametrize(("item", "expected"), ROUTES)
def test_route(item, expected):
    assert route(item) == expected


ROBOTS = [
    ([], None, None),
    (["noai"], None, "noai"),
    (["NoImageAI"], None, "noimageai"),
    (["noarchive, noindex"], None, "noindex"),
    (["nofollow", "noimageindex"], None, "noimageindex"),
    (["all"], None, None),
    (["googlebot: noindex"], None, None),
    (["googlebot: noindex"], "GoogleBot", "noindex"),
    (["tinymix: noai"], None, "noai"),
    (["TinyMix : noimageai, nofollow"], None, "noimageai"),
    (["acme-bot: noai"], "acme-bot", "noai"),
    (["unavailable_after: 25 Jun 2010 15:00:00 PST"], None, None),
    (["unavailable_after: 25 Jun 2010, noai"], None, "noai"),
]


@pytest.mark.parametrize(("values", "token", "expected"), ROBOTS)
def test_robots_block(values, token, expected):
    assert robots_block(values, token) == expected


def test_retry_after_and_delay():
    now = 1_700_000_000.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("1") == 1.0
    assert parse_retry_after(" 7 ") == 7.0
    assert parse_retry_after("3600") == 30.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(email.utils.formatdate(now + 12, usegmt=True), now=now) == 12.0
    assert parse_retry_after(email.utils.formatdate(now - 50, usegmt=True), now=now) == 0.0
    assert [retry_delay(a, 0.5, None, 1.0) for a in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert retry_delay(2, 0.5, None, 1.5) == 3.0
    assert retry_delay(3, 0.5, 7.0, 1.2) == 7.0


def test_fault_server_counts_and_quiet_404(server):
    # the counters the other tests rely on: per path, query string excluded
    fetch_one(options(), server.url + "/ok/a.jpg?x=1")
    fetch_one(options(), server.url + "/ok/a.jpg?x=2")
    fetch_one(options(), server.url + "/no-such-route")
    assert server.hits == Counter({"/ok/a.jpg": 2, "/no-such-route": 1})


def test_bomb_png_declares_huge_size():
    from PIL import Image

    data = bomb_png()
    assert len(data) < 200_000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))
    small = Image.open(io.BytesIO(bomb_png(3000)))
    small.load()  # the same construction decodes: the stream is valid, not just a header
    assert small.size == (3000, 3000) and small.getextrema() == (0, 0)


def test_path_objects_and_other_types_are_not_urls(tmp_path: Path):
    (tmp_path / "p.jpg").write_bytes(b"p")
    with Downloader(options()) as downloader:
        got = dict(downloader.fetch_many([(0, tmp_path / "p.jpg"), (1, 3)]))  # type: ignore[list-item]
    assert (got[0].error, got[1].error) == ("bad url: PosixPath", "bad url: int")
