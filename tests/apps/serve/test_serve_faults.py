"""``salip serve`` under faults: ``kill -9`` while a job runs and a restart (the job
completes, a waiting client notices nothing but time; or it fails after the bounded
attempts), a full disk (the job fails in one line, the server stays up), and the queue's
recovery rules on the database itself."""

from __future__ import annotations

import errno
import json
import threading
import time

import pytest

import salip
from salip.apps.serve.store import Job, JobStore
from tests.apps.serve.conftest import FAST
from tests.conftest import TOTALSEG, require_data

#: A job slow enough to be caught running (slice by slice, a denser grid).
SLOW = {"points_per_side": 12, "strategy": "slices"}


def _wait_running(server, job: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    with server.http() as http:
        while time.monotonic() < deadline:
            state = http.get(f"/v1/jobs/{job}").json()["state"]
            if state == "running":
                return
            assert state == "queued", state
            time.sleep(0.02)
    pytest.fail(f"job {job} did not start in {timeout_s} s")


def _wait_progress(server, job: str, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    with server.http() as http:
        while time.monotonic() < deadline:
            status = http.get(f"/v1/jobs/{job}").json()
            assert status["state"] == "running", status
            if "stages_s" in status["progress"]:
                return status["progress"]
            time.sleep(0.05)
    pytest.fail(f"job {job} showed no progress in {timeout_s} s")


def test_kill_9_while_a_job_runs_then_restart_completes_it(make_server, tmp_path, tiny_models):
    ct = require_data(TOTALSEG / "example_ct_sm.nii.gz")
    server = make_server().start()
    request = json.dumps({"organs": ["liver"], "outputs": ["mask"], "settings": SLOW})
    job = server.submit(ct, request).json()["id"]
    client = salip.Client(server.url, token_file=server.token_file, retry_s=180)
    waited: dict = {}
    waiter = threading.Thread(target=lambda: waited.update(client.wait(job, poll_s=0.2)))
    waiter.start()
    _wait_running(server, job)
    progress = _wait_progress(server, job)  # the stages the running job has passed
    assert "read" in progress["stages_s"] and progress["running_s"] >= 0
    assert progress["stage"] in progress["stages_s"]
    server.kill()
    out = server.data / "jobs" / job / "out"
    assert not (out / "mask.nii.gz").exists()  # killed before it finished
    time.sleep(1.0)  # the client finds no server for a while
    server.start()
    waiter.join(timeout=300)
    assert not waiter.is_alive()
    assert waited["state"] == "done" and waited["attempts"] == 2, waited
    assert "recovered after a stop: 1 running job(s) queued again" in server.log_text()
    client.download(job, "mask", tmp_path / "remote.nii.gz")
    client.close()
    local = tmp_path / "local.nii.gz"
    salip.segment(ct, organs=["liver"], output=local, **tiny_models, **SLOW)
    assert (tmp_path / "remote.nii.gz").read_bytes() == local.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["mask.json", "mask.nii.gz", "report.json"]


def test_a_job_that_keeps_dying_with_the_server_fails_with_the_reason(make_server):
    ct = require_data(TOTALSEG / "example_ct_sm.nii.gz")
    server = make_server("--max-attempts", "1").start()
    request = json.dumps({"organs": ["liver"], "settings": SLOW})
    job = server.submit(ct, request).json()["id"]
    _wait_running(server, job)
    server.kill()
    server.start()
    status = server.wait(job)
    assert status["state"] == "failed"
    assert status["error"] == (
        "the server stopped while this job ran, 1 times; it is not retried again"
    )
    assert not (server.data / "jobs" / job / "out").exists()  # nothing half-written kept


def test_recovery_rules_of_the_queue(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3", max_attempts=2)
    for name in "abc":
        store.add(Job(name, "queued", {"organs": ["liver"]}, "input.png"))
    assert store.claim().id == "a" and store.claim().id == "b"  # oldest first
    store.cancel("b")  # a cancel asked while it runs
    assert store.recover() == (["a"], [])  # a: queued again; b: cancelled
    assert store.get("b").state == "cancelled" and store.get("a").state == "queued"
    assert store.claim().id == "a" and store.get("a").attempts == 2
    assert store.recover() == ([], ["a"])  # started twice: failed
    assert "2 times" in store.get("a").error
    job = store.claim()
    store.release(job.id)  # an orderly stop does not count the attempt
    assert store.get(job.id).attempts == 0 and store.get(job.id).state == "queued"
    assert store.counts() == {"queued": 1, "running": 0, "done": 0, "failed": 1, "cancelled": 1}


@pytest.fixture
def in_process(tmp_path, tiny_models):
    """The app in this process (Starlette's test client) with one worker thread."""
    from fastapi.testclient import TestClient

    from salip.apps.serve import ServeConfig, open_server
    from salip.apps.serve.app import create_app
    from salip.core.config import ClusterConfig, SegmentConfig

    defaults = SegmentConfig().replace(
        **{k: v for k, v in tiny_models.items() if k != "clip_pretrained"},
        points_per_side=int(FAST[1]), modality="ct",
    )  # fmt: skip
    config = ServeConfig(data=tmp_path / "data", token_file=tmp_path / "token")
    state = open_server(config, defaults, ClusterConfig())
    state.dispatcher.start()
    assert state.dispatcher.ready.wait(120)
    with TestClient(create_app(state)) as client:
        client.headers["Authorization"] = f"Bearer {state.token}"
        yield client, state
    state.dispatcher.stop()


def _submit(client, path):
    with open(path, "rb") as handle:
        answer = client.post("/v1/jobs", files={"file": (path.name, handle)},
                             data={"request": json.dumps({"organs": ["liver"]})})  # fmt: skip
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def _wait(client, job, timeout_s=120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get(f"/v1/jobs/{job}").json()
        if status["state"] in ("done", "failed"):
            return status
        time.sleep(0.05)
    pytest.fail(f"job {job} did not end")


def test_a_full_disk_fails_the_job_in_one_line_and_the_server_stays_up(in_process, monkeypatch):
    client, state = in_process
    png = require_data(TOTALSEG.parent / "slices" / "images" / "amos_0006_90.png")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr("salip.api.pipeline.save_mask", full)
        status = _wait(client, _submit(client, png))
    assert status["state"] == "failed"
    assert (
        status["error"].startswith("cannot write ") and "No space left on device" in status["error"]
    )
    assert "\n" not in status["error"] and str(state.config.data) not in status["error"]
    assert not (state.jobs_folder / status["id"] / "out").exists()
    assert client.get("/healthz").status_code == 200
    assert _wait(client, _submit(client, png))["state"] == "done"  # space again: it works
    # A full disk while an upload is stored: 507, nothing kept.
    before = sorted(p.name for p in state.jobs_folder.iterdir())
    with monkeypatch.context() as patch:
        patch.setattr("salip.apps.serve.app._save", full)
        with open(png, "rb") as handle:
            answer = client.post("/v1/jobs", files={"file": (png.name, handle)},
                                 data={"request": json.dumps({"organs": ["liver"]})})  # fmt: skip
    assert answer.status_code == 507 and "No space left" in answer.json()["error"]
    assert sorted(p.name for p in state.jobs_folder.iterdir()) == before
    assert list(state.uploads_folder.iterdir()) == []


def test_an_orderly_stop_puts_the_running_job_back_without_counting_it(make_server):
    ct = require_data(TOTALSEG / "example_ct_sm.nii.gz")
    server = make_server().start()
    job = server.submit(ct, json.dumps({"organs": ["liver"], "settings": SLOW})).json()["id"]
    _wait_running(server, job)
    server.stop()  # SIGTERM
    assert server.proc.returncode == 0, server.log_text()
    stored = JobStore(server.data / "jobs.sqlite3").get(job)
    assert stored.state == "queued" and stored.attempts == 0
    assert "1 running job(s) put back in the queue" in server.log_text()
    server.start()
    status = server.wait(job)
    assert status["state"] == "done" and status["attempts"] == 1


def test_an_upload_that_stalls_is_ended_with_408(make_server):
    """A client that sends part of its body and stops holds no connection past
    ``--upload-timeout``; nothing of its upload is kept."""
    import socket

    server = make_server("--upload-timeout", "1").start()
    head = (
        "POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {server.token}\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 100000\r\n\r\n"
        '--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode() + b"\x89PNG" * 10)
        start = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):  # headers, then body
            chunk = sock.recv(65536)  # bounded by the socket's 30 s timeout
            if not chunk:
                break
            answer += chunk
        answer = answer.decode(errors="replace")
    assert answer.startswith("HTTP/1.1 408"), answer
    assert '"error":"the upload took too long' in answer
    assert time.monotonic() - start < 10
    assert list((server.data / "uploads").iterdir()) == []
    assert list((server.data / "jobs").iterdir()) == []
