from __future__ import annotations

import http.client
import io
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from shards.serve import CONTENT_TYPES, FolderServer, serve_folder

ROOT = Path(__file__).resolve().parents[2]


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (4, 3), (255, 0, 0, 128)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "images" / "b.png").write_bytes(_png())
    (root / "x.json").write_text('{"a": 1}')
    (root / "c.tsv").write_text("caption\thttp://x/y.jpg\n")
    (root / "t.parquet").write_bytes(b"PAR1....PAR1")
    (tmp_path / "secret.txt").write_text("outside the served folder")
    return root


def _get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.headers["Content-Type"], r.read()


def test_serves_bytes_with_pinned_content_types(folder: Path) -> None:
    with serve_folder(folder) as base:
        for rel, ctype in [
            ("images/a.jpg", "image/jpeg"),
            ("images/b.png", "image/png"),
            ("x.json", "application/json"),
            ("c.tsv", "text/tab-separated-values; charset=utf-8"),
            ("t.parquet", "application/vnd.apache.parquet"),
        ]:
            status, got_type, body = _get(f"{base}/{rel}")
            assert (status, got_type, body) == (200, ctype, (folder / rel).read_bytes())
            assert CONTENT_TYPES[Path(rel).suffix] == ctype


def test_binds_loopback_on_an_ephemeral_port(folder: Path) -> None:
    with FolderServer(folder) as server:
        host, port = server._server.server_address[:2]
        assert host == "127.0.0.1"
        assert port > 0
        assert server.url == f"http://127.0.0.1:{port}"


def test_missing_file_directory_and_traversal_are_404(folder: Path) -> None:
    with serve_folder(folder) as base:
        for rel in ["nope.jpg", "images/", "images"]:
            with pytest.raises(urllib.error.HTTPError) as e:
                _get(f"{base}/{rel}")
            assert e.value.code == 404, rel
        # urllib would normalise "..", so send the raw request line.
        conn = http.client.HTTPConnection("127.0.0.1", int(base.rsplit(":", 1)[1]), timeout=5)
        conn.request("GET", "/../secret.txt")
        resp = conn.getresponse()
        assert resp.status == 404
        assert b"outside" not in resp.read()
        conn.close()


def test_quiet_on_stderr(folder: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with serve_folder(folder) as base:
        _get(f"{base}/images/a.jpg")
        with pytest.raises(urllib.error.HTTPError):
            _get(f"{base}/missing.jpg")
        # A client that connects and hangs up at once.
        socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=5).close()
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_threaded_a_stalled_client_does_not_block_others(folder: Path) -> None:
    with serve_folder(folder) as base:
        port = int(base.rsplit(":", 1)[1])
        stalled = socket.create_connection(("127.0.0.1", port), timeout=5)
        stalled.sendall(b"GET /images/a.jpg HTTP/1.1\r\n")  # never finishes its headers
        try:
            assert _get(f"{base}/images/b.png")[2] == (folder / "images" / "b.png").read_bytes()
        finally:
            stalled.close()


def test_stops_cleanly_and_the_port_can_be_reused(folder: Path) -> None:
    with serve_folder(folder) as base:
        assert _get(f"{base}/x.json")[0] == 200
    port = int(base.rsplit(":", 1)[1])
    with pytest.raises(urllib.error.URLError):
        _get(f"{base}/x.json")
    with serve_folder(folder, port=port) as again:
        assert again == base
        assert _get(f"{again}/x.json")[2] == b'{"a": 1}'


def test_folder_server_start_stop_and_errors(folder: Path, tmp_path: Path) -> None:
    server = FolderServer(folder)
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.url
    server.start()
    assert server.start() is server  # idempotent
    url = server.url
    assert _get(f"{url}/x.json")[0] == 200
    server.stop()
    server.stop()
    with pytest.raises(RuntimeError):
        _ = server.url
    with pytest.raises(NotADirectoryError, match="x.json"):
        FolderServer(folder / "x.json")


def test_root_created_after_start_is_served(tmp_path: Path) -> None:
    root = tmp_path / "later"
    with serve_folder(root) as base:
        with pytest.raises(urllib.error.HTTPError):
            _get(f"{base}/a.txt")
        root.mkdir()
        (root / "a.txt").write_text("hi")
        assert _get(f"{base}/a.txt") == (200, "text/plain; charset=utf-8", b"hi")


def test_serve_forever_blocks_until_interrupted(folder: Path, tmp_path: Path) -> None:
    code = (
        "import sys; from shards.serve import serve_forever; "
        "serve_forever(sys.argv[1], ready=lambda url: print(url, flush=True))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # as from a terminal: a suite started as a background job inherits SIGINT ignored, and so would the server
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        assert _get(f"{url}/x.json")[2] == b'{"a": 1}'
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    missing = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "nope")], capture_output=True, text=True, env=env
    )
    assert missing.returncode != 0
    assert "nope: no such folder" in missing.stderr
