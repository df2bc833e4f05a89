"""A real ``salip serve`` process on a loopback port with the tiny models, and helpers to
talk to it. Every wait is bounded in time."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, TOTALSEG, require_data

pytest.importorskip("fastapi", reason="salip[serve] is not installed: pip install -e '.[dev]'")
pytest.importorskip("uvicorn", reason="salip[serve] is not installed: pip install -e '.[dev]'")

#: Settings of every job in these tests (fast with the tiny models).
FAST = ["--points-per-side", "4"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """One ``salip serve`` process: start, kill -9, restart on the same data folder."""

    data: Path
    home: Path
    token_file: Path
    models: dict[str, str]
    extra: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen | None = None
    log: Path | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "salip.apps.cli", "serve", "--port", str(self.port),
            "--data", str(self.data), "--token-file", str(self.token_file),
            "--sam-checkpoint", self.models["sam_checkpoint"],
            "--clip-model", self.models["clip_model"], "--device", "cpu", *FAST, *self.extra,
        ]  # fmt: skip

    def start(self, timeout_s: float = 120.0) -> Server:
        self.port = self.port or free_port()
        self.starts += 1
        self.log = self.data.parent / f"server-{self.starts}.log"
        env = os.environ | {"SALIP_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                self.command(), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"salip serve exited ({self.proc.returncode}): {self.log_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"salip serve not ready in {timeout_s} s: {self.log_text()}")

    def kill(self) -> None:
        """``kill -9``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""

    def http(self, token: str | None = "default") -> httpx.Client:
        token = self.token if token == "default" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def submit(self, path: Path, request: str, name: str | None = None) -> httpx.Response:
        with self.http() as http, open(path, "rb") as handle:
            return http.post(
                "/v1/jobs",
                files={"file": (name or path.name, handle)},
                data={"request": request},
            )

    def wait(self, job: str, timeout_s: float = 300.0, until=("done", "failed", "cancelled")):
        deadline = time.monotonic() + timeout_s
        with self.http() as http:
            while time.monotonic() < deadline:
                status = http.get(f"/v1/jobs/{job}").json()
                if status["state"] in until:
                    return status
                time.sleep(0.1)
        pytest.fail(f"job {job} not {until} in {timeout_s} s: {status}")

    def contents(self) -> set[str]:
        """Every path under the data folder but the database files."""
        return {
            str(p.relative_to(self.data))
            for p in self.data.rglob("*")
            if not p.name.startswith("jobs.sqlite3")
        }


@pytest.fixture(scope="session")
def serve_home(tmp_path_factory) -> Path:
    """One SALIP_HOME for every server of the session (the ONNX graphs are exported once)."""
    return tmp_path_factory.mktemp("serve_home")


@pytest.fixture
def make_server(tmp_path, serve_home, tiny_models):
    servers: list[Server] = []

    def make(*extra: str, data: Path | None = None) -> Server:
        server = Server(
            data or tmp_path / "data", serve_home, tmp_path / "token", tiny_models, list(extra)
        )
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, serve_home, tiny_sam_path, tiny_clip_dir):
    """A server shared by a module's tests (8 MiB uploads, 8M voxels at most)."""
    folder = tmp_path_factory.mktemp("server")
    models = {"sam_checkpoint": str(tiny_sam_path), "clip_model": f"local-dir:{tiny_clip_dir}"}
    running = Server(
        folder / "data",
        serve_home,
        folder / "token",
        models,
        ["--max-upload", "8", "--max-voxels", "8000000"],
    )
    running.start()
    yield running
    running.stop()


def zip_folder(folder: Path, target: Path, skip: int | None = None) -> Path:
    """Zip a DICOM folder's files (sorted; ``skip``: leave out the one at that index)."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    with zipfile.ZipFile(target, "w") as archive:
        for index, path in enumerate(files):
            if index != skip:
                archive.write(path, path.name)
    return target


@pytest.fixture
def scans(tmp_path):
    """A NIfTI volume, a DICOM series as a zip, and a 2D CT slice."""
    return {
        "nifti": require_data(TOTALSEG / "example_ct_sm.nii.gz"),
        "dicom": zip_folder(require_data(TOTALSEG / "example_ct_dicom_uids"), tmp_path / "ct.zip"),
        "png": require_data(TOTALSEG.parent / "slices" / "images" / "amos_0006_90.png"),
    }
