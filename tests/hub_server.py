"""A loopback Hugging Face hub for tests: serves files of model repositories over HTTP.

It answers what ``huggingface_hub.hf_hub_download`` asks: ``HEAD`` and ``GET`` of
``/ORG/REPO/resolve/REVISION/FILENAME``, with the commit, ETag and size headers the real
hub sends, and 404 (with the hub's error-code header) for files it does not hold. The real
client downloads from it into its cache layout, so salip's tag path runs as for a user.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from salip.models.clip_hub import clip_cache_dir

COMMIT = "1" * 40
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


class LoopbackHub:
    """Server state: ``files[(repo, filename)] = path``, and the request paths seen."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], Path] = {}
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, repo: str, filename: str, path: Path) -> None:
        self.files[(repo, filename)] = Path(path)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _answer(self, body: bool) -> None:
                hub.requests.append(f"{self.command} {self.path}")
                match = _RESOLVE.match(self.path.split("?")[0])
                path = hub.files.get((match["repo"], match["file"])) if match else None
                if path is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
                self._answer(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(body=True)

        return Handler

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def serving_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackHub]:
    """A running :class:`LoopbackHub` that huggingface_hub (and salip's probe) talk to."""
    import huggingface_hub.constants as constants

    hub = LoopbackHub()
    hub.start()
    try:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        template = hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        yield hub
    finally:
        hub.stop()


def place_in_hub_cache(repo: str, filename: str, source: Path) -> Path:
    """Put ``source`` where huggingface_hub's cache (under salip's CLIP cache) keeps it.

    A hard link where the file system allows (test weights run to hundreds of MB), else a
    copy. Several files of one repo share its snapshot.
    """
    folder = clip_cache_dir() / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    target = folder / "snapshots" / revision / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target
