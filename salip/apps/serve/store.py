"""The job queue of ``salip serve``: one SQLite database (standard library ``sqlite3``, WAL
journal, ``synchronous=FULL``) holding every job's state, request and outcome.

Every change is one transaction, so a server killed at any instant (``kill -9``, power cut
after the commit) leaves each job in exactly one state. At start, :meth:`JobStore.recover`
puts the jobs that were running back in the queue, or fails those that have been started
``max_attempts`` times with the reason.

Connections are opened per call (cheap for SQLite, and safe across the server's threads).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salip.api.service import JOB_STATES

__all__ = [
    "Job",
    "JobStore",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    input_name TEXT NOT NULL,
    upload_name TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    outputs TEXT NOT NULL DEFAULT '{}',
    summary TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (state, created);
"""


@dataclass
class Job:
    """One job as the database holds it.

    Attributes:
        id: a random UUID4 (hex with dashes); the name of the job's folder.
        state: one of :data:`~salip.api.service.JOB_STATES`.
        request: the checked request (organs, outputs, settings), plain JSON data.
        input_name: the input's file name in the job's folder (chosen by the server).
        upload_name: the name the client gave its upload (shown, never used as a path).
        created, started, finished: Unix times (None: not yet).
        attempts: how many times a worker started it.
        cancel: a cancel was asked while it ran; its outputs are dropped when it ends.
        error: the one-line reason of a failed job.
        outputs: output kind -> file name in the job's ``out`` folder.
        summary: organ -> {found, volume_ml, confidence} of a finished job.
    """

    id: str
    state: str
    request: dict[str, Any]
    input_name: str
    upload_name: str = ""
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    attempts: int = 0
    cancel: bool = False
    error: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def _job(row: sqlite3.Row) -> Job:
    return Job(
        row["id"], row["state"], json.loads(row["request"]), row["input_name"],
        row["upload_name"], row["created"], row["started"], row["finished"], row["attempts"],
        bool(row["cancel"]), row["error"], json.loads(row["outputs"]), json.loads(row["summary"]),
    )  # fmt: skip


class JobStore:
    """The jobs database at ``path`` (created with its tables if absent).

    Args:
        path: the SQLite file.
        max_attempts: starts a job may have; a job that was running when the server died
            for the ``max_attempts``-th time is failed instead of queued again.
    """

    def __init__(self, path: str | Path, *, max_attempts: int = 3) -> None:
        self.path, self.max_attempts = Path(path), max_attempts
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: set once for the file
            db.executescript(_SCHEMA)
        finally:
            db.close()

    @contextlib.contextmanager
    def _connect(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """A connection for one transaction: committed on success, rolled back on error.
        A reading one does not take the write lock (WAL readers never wait for a writer)."""
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    def add(self, job: Job) -> None:
        """Queue a new job."""
        with self._connect() as db:
            db.execute(
                "INSERT INTO jobs (id, state, request, input_name, upload_name, created) "
                "VALUES (?, 'queued', ?, ?, ?, ?)",
                (job.id, json.dumps(job.request), job.input_name, job.upload_name, time.time()),
            )

    def get(self, job_id: str) -> Job | None:
        """The job, or None."""
        with self._connect(write=False) as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def recent(self, limit: int = 100) -> list[Job]:
        """The newest ``limit`` jobs, newest first."""
        with self._connect(write=False) as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,))
            return [_job(r) for r in rows.fetchall()]

    def position(self, job_id: str) -> int:
        """How many queued jobs are ahead of a queued job."""
        with self._connect(write=False) as db:
            row = db.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND created < "
                "(SELECT created FROM jobs WHERE id = ?)",
                (job_id,),
            ).fetchone()
        return int(row[0])

    def claim(self) -> Job | None:
        """Take the oldest queued job: it becomes ``running`` with one more attempt."""
        with self._connect() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE state = 'queued' ORDER BY created LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', started = ?, attempts = attempts + 1 "
                "WHERE id = ?",
                (time.time(), row["id"]),
            )
            return _job(db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone())

    def finish(
        self,
        job_id: str,
        state: str,
        *,
        error: str = "",
        outputs: dict[str, str] | None = None,
        summary: dict[str, Any] | None = None,
    ) -> str:
        """End a running job as ``state`` ("done", "failed", or "queued" to run it again);
        a job cancelled meanwhile stays cancelled. Returns the state it ends in."""
        with self._connect() as db:
            row = db.execute("SELECT state, cancel FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["state"] != "running":
                return "deleted" if row is None else row["state"]
            if row["cancel"]:
                state, outputs, summary = "cancelled", {}, {}
            db.execute(
                "UPDATE jobs SET state = ?, finished = ?, error = ?, outputs = ?, summary = ? "
                "WHERE id = ?",
                (
                    state, None if state == "queued" else time.time(), error,
                    json.dumps(outputs or {}), json.dumps(summary or {}), job_id,
                ),
            )  # fmt: skip
        return state

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued or running job (a running one ends as cancelled when its worker
        returns), or forget a finished one. Returns the job's state before, or None."""
        with self._connect() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            if row["state"] == "queued":
                db.execute(
                    "UPDATE jobs SET state = 'cancelled', finished = ? WHERE id = ?",
                    (time.time(), job_id),
                )
            elif row["state"] == "running":
                db.execute("UPDATE jobs SET cancel = 1 WHERE id = ?", (job_id,))
            else:
                db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            return str(row["state"])

    def release(self, job_id: str) -> None:
        """Put a running job back in the queue without counting its attempt (the server
        is stopping in order, not crashing)."""
        with self._connect() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0) "
                "WHERE id = ? AND state = 'running'",
                (job_id,),
            )

    def recover(self) -> tuple[list[str], list[str]]:
        """After a restart: every job left ``running`` is queued again, or failed once it
        has been started ``max_attempts`` times. Returns (requeued ids, failed ids)."""
        requeued, failed = [], []
        with self._connect() as db:
            rows = db.execute("SELECT id, attempts, cancel FROM jobs WHERE state = 'running'")
            for row in rows.fetchall():
                if row["cancel"]:
                    db.execute(
                        "UPDATE jobs SET state = 'cancelled', finished = ? WHERE id = ?",
                        (time.time(), row["id"]),
                    )
                elif row["attempts"] >= self.max_attempts:
                    reason = (
                        f"the server stopped while this job ran, {row['attempts']} times; "
                        "it is not retried again"
                    )
                    db.execute(
                        "UPDATE jobs SET state = 'failed', finished = ?, error = ? WHERE id = ?",
                        (time.time(), reason, row["id"]),
                    )
                    failed.append(row["id"])
                else:
                    db.execute("UPDATE jobs SET state = 'queued' WHERE id = ?", (row["id"],))
                    requeued.append(row["id"])
        return requeued, failed

    def ids(self) -> set[str]:
        """Every job id in the database."""
        with self._connect(write=False) as db:
            return {r[0] for r in db.execute("SELECT id FROM jobs").fetchall()}

    def counts(self) -> dict[str, int]:
        """Jobs per state."""
        with self._connect(write=False) as db:
            rows = db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state: 0 for state in JOB_STATES} | {r[0]: int(r[1]) for r in rows}
