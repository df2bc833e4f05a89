"""Checkpoint downloads against a loopback HTTP server: atomic, verified, nothing left behind.

Every test talks only to a ``ThreadingHTTPServer`` on 127.0.0.1 that the ``server`` fixture
starts in a background thread; the network is never touched.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from salip.apps.cli import main
from salip.core.errors import DownloadError
from salip.io.writing import file_mode
from salip.models import download as download_mod
from salip.models.download import download_checkpoint, download_file, list_cached
from salip.models.registry import SAM_CHECKPOINTS, CheckpointInfo, checkpoint_dir

PAYLOAD = os.urandom(3 * (1 << 20) + 12345)  # several 1 MiB chunks plus a tail
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
WRONG_SHA = "0" * 64
VIT_B_FILE = SAM_CHECKPOINTS["vit_b"].filename


@dataclass
class Route:
    """What the loopback server answers for one path."""

    body: bytes = b""
    status: int = 200
    truncate: bool = False  # announce twice the body's length, send the body, hang up


@dataclass
class Loopback:
    """A running loopback server: its base URL, its routes and the paths it was asked for."""

    base: str
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Loopback]:
    """Start a loopback HTTP server on a free port; shut it down after the test."""
    # A proxy from the environment must never see these requests.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")

    state = Loopback(base="")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            with lock:
                state.requests.append(self.path)
            route = state.routes.get(self.path)
            if route is None:
                self.send_error(404, "not found")
                return
            if route.status != 200:
                self.send_error(route.status, "server error")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            announced = 2 * len(route.body) if route.truncate else len(route.body)
            self.send_header("Content-Length", str(announced))
            self.end_headers()
            self.wfile.write(route.body)
            self.wfile.flush()
            if route.truncate:
                self.close_connection = True

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    host, port = httpd.server_address[:2]
    state.base = f"http://{host}:{port}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _files(folder: Path) -> list[str]:
    """Names of everything in ``folder`` (hidden ``.part`` files included)."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_file_lands_with_no_leftovers(server: Loopback, tmp_path: Path) -> None:
    server.routes["/good.bin"] = Route(PAYLOAD)
    folder = tmp_path / "ckpt"
    dest = folder / "good.bin"

    result = download_file(server.url("/good.bin"), dest, PAYLOAD_SHA, progress=False)

    assert result == dest
    assert dest.is_file()
    assert dest.read_bytes() == PAYLOAD
    assert _files(folder) == ["good.bin"]
    assert server.requests == ["/good.bin"]
    assert dest.stat().st_mode & 0o777 == file_mode()  # the umask's mode, not mkstemp's 0600


def test_good_file_with_progress_bar(server: Loopback, tmp_path: Path) -> None:
    server.routes["/good.bin"] = Route(PAYLOAD)
    dest = tmp_path / "ckpt" / "good.bin"

    download_file(server.url("/good.bin"), dest, PAYLOAD_SHA, progress=True)

    assert dest.read_bytes() == PAYLOAD
    assert _files(dest.parent) == ["good.bin"]


def test_wrong_sha256_leaves_nothing(server: Loopback, tmp_path: Path) -> None:
    server.routes["/good.bin"] = Route(PAYLOAD)
    folder = tmp_path / "ckpt"

    with pytest.raises(DownloadError, match="SHA-256") as info:
        download_file(server.url("/good.bin"), folder / "good.bin", WRONG_SHA, progress=False)

    assert PAYLOAD_SHA in str(info.value)
    assert WRONG_SHA in str(info.value)
    assert folder.is_dir()
    assert _files(folder) == []


def test_interrupted_transfer_leaves_nothing(server: Loopback, tmp_path: Path) -> None:
    server.routes["/cut.bin"] = Route(PAYLOAD, truncate=True)
    folder = tmp_path / "ckpt"

    with pytest.raises(DownloadError) as info:
        download_file(server.url("/cut.bin"), folder / "cut.bin", PAYLOAD_SHA, progress=False)

    assert "SHA-256" not in str(info.value)  # caught as a short transfer, not a bad hash
    assert server.requests == ["/cut.bin"]
    assert _files(folder) == []


@pytest.mark.parametrize("status", [404, 500])
def test_server_error_leaves_nothing(server: Loopback, tmp_path: Path, status: int) -> None:
    server.routes["/bad.bin"] = Route(PAYLOAD, status=status)
    folder = tmp_path / "ckpt"

    with pytest.raises(DownloadError, match=str(status)):
        download_file(server.url("/bad.bin"), folder / "bad.bin", PAYLOAD_SHA, progress=False)

    assert server.requests == ["/bad.bin"]
    assert _files(folder) == []


def test_refused_connection_leaves_nothing(server: Loopback, tmp_path: Path) -> None:
    # ``server`` only clears proxy settings here; the URL is a loopback port nobody listens on.
    folder = tmp_path / "ckpt"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/good.bin"

    with pytest.raises(DownloadError, match="cannot download"):
        download_file(url, folder / "good.bin", PAYLOAD_SHA, progress=False, timeout=5)

    assert _files(folder) == []


def test_failed_download_keeps_existing_file(server: Loopback, tmp_path: Path) -> None:
    server.routes["/good.bin"] = Route(PAYLOAD)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    dest = folder / "good.bin"
    dest.write_bytes(b"old checkpoint bytes")

    with pytest.raises(DownloadError, match="SHA-256"):
        download_file(server.url("/good.bin"), dest, WRONG_SHA, progress=False)

    assert dest.read_bytes() == b"old checkpoint bytes"
    assert _files(folder) == ["good.bin"]


def test_cli_download_rejects_garbage_from_mirror(
    server: Loopback, capsys: pytest.CaptureFixture[str]
) -> None:
    server.routes["/" + VIT_B_FILE] = Route(b"this is not a SAM checkpoint\n" * 1000)

    code = main(["models", "download", "vit_b", "--mirror", server.base, "--no-progress"])

    err = capsys.readouterr().err
    assert code != 0
    assert "salip: error:" in err
    assert "SHA-256" in err
    assert server.requests == ["/" + VIT_B_FILE]
    assert _files(checkpoint_dir()) == []

    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    vit_b_lines = [line for line in out.splitlines() if line.startswith("vit_b")]
    assert len(vit_b_lines) == 1
    assert "not cached" in vit_b_lines[0]


def test_cli_download_success_then_listed_as_cached(
    server: Loopback,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # download.py imports the registry's dict object itself, so one setitem patches both.
    assert download_mod.SAM_CHECKPOINTS is SAM_CHECKPOINTS
    monkeypatch.setitem(
        SAM_CHECKPOINTS, "vit_b", CheckpointInfo("vit_b", VIT_B_FILE, PAYLOAD_SHA, len(PAYLOAD))
    )
    server.routes["/" + VIT_B_FILE] = Route(PAYLOAD)

    code = main(["models", "download", "vit_b", "--mirror", server.base + "/", "--no-progress"])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    dest = checkpoint_dir() / VIT_B_FILE
    assert dest.read_bytes() == PAYLOAD
    assert _files(checkpoint_dir()) == [VIT_B_FILE]
    assert server.requests == ["/" + VIT_B_FILE]  # the trailing "/" of the mirror is dropped

    rows = {row["name"]: row for row in list_cached()}
    assert rows["vit_b"]["cached"] is True
    assert rows["vit_b"]["bytes"] == len(PAYLOAD)

    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    vit_b_line = next(line for line in out.splitlines() if line.startswith("vit_b"))
    assert "not cached" not in vit_b_line
    assert f"cached, {len(PAYLOAD):,} bytes" in vit_b_line

    # Cached now: a second download makes no request.
    assert main(["models", "download", "vit_b", "--mirror", server.base, "--no-progress"]) == 0
    assert server.requests == ["/" + VIT_B_FILE]


def test_download_checkpoint_uses_existing_file(server: Loopback, tmp_path: Path) -> None:
    dest_dir = tmp_path / "mine"
    dest_dir.mkdir()
    existing = dest_dir / VIT_B_FILE
    existing.write_bytes(b"already here")

    result = download_checkpoint(
        "vit_b", base_url=server.base, dest_dir=dest_dir, force=False, progress=False
    )

    assert result == existing
    assert existing.read_bytes() == b"already here"
    assert server.requests == []


def test_download_checkpoint_force_fetches_again(server: Loopback, tmp_path: Path) -> None:
    # With force=True the mirror is asked; its bytes do not match the official hash, so the
    # download fails and the file already there is kept.
    dest_dir = tmp_path / "mine"
    dest_dir.mkdir()
    existing = dest_dir / VIT_B_FILE
    existing.write_bytes(b"already here")
    server.routes["/" + VIT_B_FILE] = Route(PAYLOAD)

    with pytest.raises(DownloadError, match="SHA-256"):
        download_checkpoint(
            "vit_b", base_url=server.base, dest_dir=dest_dir, force=True, progress=False
        )

    assert server.requests == ["/" + VIT_B_FILE]
    assert existing.read_bytes() == b"already here"
    assert _files(dest_dir) == [VIT_B_FILE]


def test_unknown_checkpoint_name_lists_choices(server: Loopback, tmp_path: Path) -> None:
    dest_dir = tmp_path / "mine"
    with pytest.raises(DownloadError, match="vit_b") as info:
        download_checkpoint("vit_x", base_url=server.base, dest_dir=dest_dir, progress=False)

    message = str(info.value)
    assert "vit_x" in message
    for name in ("vit_b", "vit_l", "vit_h"):
        assert name in message
    assert server.requests == []
    assert not dest_dir.exists()
