"""The HTTP API of ``salip serve`` (FastAPI): routes, bearer-token checks, upload limits and
JSON errors. See the README's "Serve" section for the table of routes.

FastAPI (on Starlette and uvicorn) was chosen over bare Starlette for its OpenAPI schema
(``/openapi.json``, ``/docs``) generated from the routes, so the served schema cannot
drift from the code.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from salip.api.service import API_PREFIX, OUTPUT_KINDS
from salip.apps.serve.intake import ApiError, check_input, input_name, parse_request
from salip.apps.serve.state import ServerState
from salip.apps.serve.store import Job
from salip.apps.serve.worker import read_progress
from salip.core.errors import one_line
from salip.core.organs import vocabulary
from salip.version import __version__

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

#: Bytes of an upload's multipart framing and request field allowed over ``max_upload``.
_FRAMING = 1 << 20


def create_app(state: ServerState) -> FastAPI:
    """The API of a server whose jobs, folders and settings are ``state``."""
    app = FastAPI(
        title="salip",
        version=__version__,
        description="Zero-shot organ segmentation jobs (SAM + CLIP, training-free).",
    )
    app.state.salip = state
    _add_errors(app)
    config = state.config
    app.add_middleware(_BodyLimit, max_upload=config.max_upload, timeout_s=config.upload_timeout_s)
    if state.config.cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(state.config.cors), allow_headers=["Authorization"],
            allow_methods=["GET", "POST", "DELETE"],
        )  # fmt: skip
    app.add_middleware(_AccessLog)  # added last: the outermost, it sees every answer
    auth = [Depends(_authorized)]

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The server answers."""
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        """200 once every worker has loaded its models, else 503 with the reason."""
        if state.dispatcher.ready.is_set():
            return JSONResponse({"ready": True, "engine": state.cluster.engine})
        reason = state.dispatcher.problem or "the workers are loading their models"
        return JSONResponse({"ready": False, "error": reason}, status_code=503)

    @app.post(f"{API_PREFIX}/jobs", status_code=202, dependencies=auth, tags=["jobs"],
              openapi_extra=_UPLOAD_SCHEMA)  # fmt: skip
    async def submit(request: Request) -> JSONResponse:
        """Queue a job: multipart ``file`` (the scan) and ``request`` (JSON)."""
        job = await _receive_job(request, state)
        logger.info("job %s queued: %s", job.id, ", ".join(job.request["organs"]))
        body = {"id": job.id, "state": "queued", "url": f"{API_PREFIX}/jobs/{job.id}"}
        return JSONResponse(body, status_code=202)

    @app.get(f"{API_PREFIX}/jobs", dependencies=auth, tags=["jobs"])
    def jobs(limit: int = 100) -> dict[str, Any]:
        """The newest jobs (at most ``limit``, up to 1000), newest first."""
        return {"jobs": [_status(state, j) for j in state.store.recent(max(1, min(limit, 1000)))]}

    @app.get(f"{API_PREFIX}/jobs/{{job_id}}", dependencies=auth, tags=["jobs"])
    def job_status(job_id: str) -> dict[str, Any]:
        """A job's state, progress, error and timings."""
        return _status(state, _job(state, job_id))

    @app.get(f"{API_PREFIX}/jobs/{{job_id}}/files/{{kind}}", dependencies=auth, tags=["jobs"])
    def job_file(job_id: str, kind: str) -> FileResponse:
        """One output of a finished job, with its media type."""
        return _file(state, _job(state, job_id), kind)

    @app.delete(f"{API_PREFIX}/jobs/{{job_id}}", dependencies=auth, tags=["jobs"])
    def delete(job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job, or delete a finished one; its files are removed."""
        job = _job(state, job_id)
        before = state.store.cancel(job.id)
        if before != "running":  # a running job's folder goes when its worker returns
            shutil.rmtree(state.jobs_folder / job.id, ignore_errors=True)
        after = {"queued": "cancelled", "running": "cancelling"}.get(str(before), "deleted")
        logger.info("job %s %s", job.id, after)
        return {"id": job.id, "state": after}

    @app.get(f"{API_PREFIX}/targets", dependencies=auth, tags=["targets"])
    def targets() -> dict[str, Any]:
        """Every target the server can segment, its user targets included."""
        return _targets(state)

    return app


def _file(state: ServerState, job: Job, kind: str) -> FileResponse:
    """Output ``kind`` of a finished job, with its media type."""
    if kind not in OUTPUT_KINDS:
        raise ApiError(404, f"no output kind {kind[:50]!r}; kinds: {', '.join(OUTPUT_KINDS)}.")
    if job.state != "done":
        raise ApiError(409, f"job {job.id} is {job.state}; its files are served once done.")
    if kind not in job.outputs:
        raise ApiError(
            404, f"job {job.id} did not ask for {kind}; it has {', '.join(job.outputs)}."
        )
    path = state.jobs_folder / job.id / "out" / job.outputs[kind]
    if not path.is_file():
        raise ApiError(410, f"the {kind} of job {job.id} is gone from the server's data folder.")
    media = OUTPUT_KINDS[kind].media_type
    if kind == "mask" and path.name.endswith(".png"):
        media = "image/png"
    shown = "inline" if kind in ("viewer", "preview") else "attachment"  # opened in a browser
    return FileResponse(path, media_type=media, filename=path.name, content_disposition_type=shown)


def _targets(state: ServerState) -> dict[str, Any]:
    """Every target the server can segment, its user targets included."""
    known = vocabulary(state.defaults.scoring.prompts_dir)
    return {
        "targets": [
            {"name": o.name, "synonyms": list(o.synonyms), "modalities": list(o.modalities),
             "source": known.sources[o.name]}
            for o in known.organs.values()
        ]
    }  # fmt: skip


_UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "request"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "request": {
                            "type": "string",
                            "description": 'JSON: {"organs": [...], "outputs": [...], '
                            '"settings": {...}}',
                        },
                    },
                }
            }
        },
    }
}


def _authorized(request: Request) -> None:
    """Require ``Authorization: Bearer <token>`` (compared in constant time). A token in
    the query string is not accepted (it would end up in logs and histories)."""
    state: ServerState = request.app.state.salip
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(
        given.strip().encode(), state.token.encode()
    ):
        raise ApiError(401, "a valid token is needed: send the header Authorization: Bearer TOKEN.")


def _job(state: ServerState, job_id: str) -> Job:
    """The job ``job_id`` names; 404 for an unknown id or one that is not a UUID."""
    try:
        canonical = str(uuid.UUID(job_id))
    except ValueError:
        canonical = ""
    job = state.store.get(canonical) if canonical == job_id.lower() else None
    if job is None:
        raise ApiError(404, f"no job {job_id[:64]!r} on this server.")
    return job


def _status(state: ServerState, job: Job) -> dict[str, Any]:
    """A job as ``GET /v1/jobs/{id}`` shows it."""
    now = time.time()
    end = job.finished or now
    progress: dict[str, Any] = {"stage": job.state}
    if job.state == "queued":
        progress["jobs_ahead"] = state.store.position(job.id)
    elif job.state == "running":
        progress["running_s"] = round(now - (job.started or now), 1)
        progress["cancelling"] = job.cancel
        progress |= read_progress(state.jobs_folder / job.id)
    return {
        "id": job.id,
        "state": job.state,
        "progress": progress,
        "error": job.error,
        "upload": job.upload_name,
        "organs": list(job.request["organs"]),
        "outputs": sorted(job.outputs) if job.state == "done" else list(job.request["outputs"]),
        "attempts": job.attempts,
        "created": job.created,
        "started": job.started,
        "finished": job.finished,
        "timings": {
            "queued_s": round((job.started or end) - job.created, 3),
            "run_s": round(end - job.started, 3) if job.started else None,
        },
        "results": job.summary,
    }


async def _receive_job(request: Request, state: ServerState) -> Job:
    """Read, store and check an upload, and queue its job. Nothing is left in the data
    folder when it is refused."""
    limit = state.config.max_upload
    job_id = str(uuid.uuid4())
    staging, folder = state.uploads_folder / job_id, state.jobs_folder / job_id
    form = None
    try:
        form = await _read_form(request)
        upload, text = form.get("file"), form.get("request")
        if upload is None or isinstance(upload, str) or not isinstance(text, str):
            raise ApiError(400, "send multipart/form-data with a file field and a request field.")
        name = input_name(upload.filename or "")
        job_request, config = parse_request(text, state.defaults)
        staging.mkdir(parents=True)
        await run_in_threadpool(_save, upload.file, staging / name, limit)
        async with state.checking:
            is_2d = await run_in_threadpool(
                check_input, staging / name, config, job_request.outputs
            )
        record = job_request.record() | {"is_2d": is_2d}
        job = Job(job_id, "queued", record, name, upload_name=_printable(upload.filename or ""))
        staging.rename(folder)
        state.store.add(job)  # queued only once its folder is whole
    except (OSError, sqlite3.Error) as exc:
        _forget(staging, folder)
        raise ApiError(507, f"the server cannot store the upload: {one_line(exc)}") from None
    except BaseException:
        _forget(staging, folder)
        raise
    finally:
        if form is not None:
            await form.close()
    return job


def _forget(*folders: Path) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


async def _read_form(request: Request) -> Any:
    """The multipart form (its size and time bounded by :class:`_BodyLimit`)."""
    try:
        return await request.form(max_files=1, max_fields=4)
    except StarletteHTTPException as exc:
        raise ApiError(400, f"the upload is not valid multipart form data: {exc.detail}") from None


class _BodyLimit:
    """ASGI middleware: a request body over ``max_upload`` bytes (plus the multipart
    framing) is refused (413): before it is read when its Content-Length says so, else as
    it streams in; and one that takes longer than ``timeout_s`` to arrive (408), so no
    client can fill the disk or hold a connection open."""

    def __init__(self, app: Any, max_upload: int, timeout_s: float) -> None:
        self.app, self.max_upload, self.timeout_s = app, max_upload, timeout_s

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_upload + _FRAMING
        claimed = dict(scope["headers"]).get(b"content-length", b"")
        over = claimed.isdigit() and int(claimed) > limit  # refused before it is read
        received, deadline, whole = 0, time.monotonic() + self.timeout_s, False

        async def counted() -> Any:
            nonlocal received, whole
            if over:
                raise ApiError(413, _too_large(self.max_upload))
            if whole:  # the body is in; later calls wait for a disconnect, unbounded
                return await receive()
            remaining = max(deadline - time.monotonic(), 0.001)
            try:
                message = await asyncio.wait_for(receive(), timeout=remaining)
            except asyncio.TimeoutError:
                raise ApiError(408, "the upload took too long; retry on a faster link.") from None
            received += len(message.get("body", b""))
            if received > limit:
                raise ApiError(413, _too_large(self.max_upload))
            whole = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, counted, send)


def _save(source: Any, target: Path, limit: int) -> None:
    """Copy the spooled upload into the data folder; 413 past ``limit`` bytes."""
    with open(target, "xb") as out:
        copied = 0
        while chunk := source.read(1 << 20):
            copied += len(chunk)
            if copied > limit:
                raise ApiError(413, _too_large(limit))
            out.write(chunk)
        out.flush()
    if copied == 0:
        raise ApiError(400, "the uploaded file is empty.")


def _too_large(limit: int) -> str:
    return f"the upload is over this server's limit of {limit / 2**20:.0f} MiB (--max-upload)."


def _printable(name: str) -> str:
    """The client's file name as data: printable characters, at most 200."""
    return "".join(c for c in name if c.isprintable())[:200]


def _add_errors(app: FastAPI) -> None:
    """Every error is JSON ``{"error": "..."}``, one line, never a traceback."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": one_line(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}"}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        message = f"internal error ({type(exc).__name__}); the server log has the details."
        return JSONResponse({"error": message}, status_code=500)


class _AccessLog:
    """ASGI middleware: one log line per request: method, path (never the query string,
    which a careless client may put a token in), status and milliseconds. Plain ASGI, so
    that an error raised while a body is read reaches the app's error handlers as is."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.log = logging.getLogger("salip.apps.serve.access")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def sent(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            took = (time.perf_counter() - start) * 1000
            self.log.info("%s %s %d %.1f ms", scope["method"], scope["path"], status[0], took)
