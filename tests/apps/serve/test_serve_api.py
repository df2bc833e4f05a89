"""``salip serve`` through HTTP, a real server process with the tiny models: jobs from
NIfTI, DICOM zip and PNG uploads give the bytes ``salip.segment`` writes; the token;
bad input refused with a one-line 4xx and nothing kept; cancel and delete."""

from __future__ import annotations

import gzip
import json
import zipfile

import highdicom as hd
import httpx
import numpy as np
import pytest

import salip
from salip.apps.cli import main
from tests.apps.serve.conftest import FAST, zip_folder
from tests.conftest import TOTALSEG, require_data

LIVER = json.dumps({"organs": ["liver"], "outputs": ["mask", "statistics", "viewer"]})
MEDIA = {
    "mask": "application/gzip",
    "labels": "application/json",
    "statistics": "application/json",
    "viewer": "text/html; charset=utf-8",
    "seg": "application/dicom",
    "report": "application/json",
}


def _local(path, tmp_path, tiny_models, **options):
    """What ``salip.segment`` writes for ``path`` with the server's settings."""
    return salip.segment(
        path, organs=["liver"], points_per_side=int(FAST[1]), **tiny_models, **options
    )


def test_jobs_from_nifti_dicom_and_png_equal_salip_segment(server, scans, tmp_path, tiny_models):
    requests = {
        "nifti": LIVER,
        "dicom": json.dumps({"organs": ["liver"], "outputs": ["seg", "statistics"]}),
        "png": json.dumps({"organs": ["the liver"], "settings": {"modality": "ct"}}),
    }
    jobs = {}
    for kind, request in requests.items():
        answer = server.submit(scans[kind], request)
        assert answer.status_code == 202, answer.text
        jobs[kind] = answer.json()["id"]
    statuses = {}
    with server.http() as http:
        for kind, job in jobs.items():
            status = statuses[kind] = server.wait(job)
            assert status["state"] == "done", status
            assert status["timings"]["run_s"] > 0 and status["attempts"] == 1
            assert status["results"]["liver"]["found"] in (True, False)
            for name in status["outputs"]:
                answer = http.get(f"/v1/jobs/{job}/files/{name}")
                assert answer.status_code == 200
                media = "image/png" if (kind, name) == ("png", "mask") else MEDIA[name]
                assert answer.headers["content-type"] == media
                (tmp_path / f"{kind}.{name}").write_bytes(answer.content)
    # Masks byte for byte as salip.segment writes them, on the same input and settings.
    local = _local(scans["nifti"], tmp_path, tiny_models, output=tmp_path / "l.nii.gz",
                   statistics=tmp_path / "l.stats.json")  # fmt: skip
    assert (tmp_path / "nifti.mask").read_bytes() == (tmp_path / "l.nii.gz").read_bytes()
    assert json.loads((tmp_path / "nifti.statistics").read_text()) == json.loads(
        (tmp_path / "l.stats.json").read_text()
    )
    assert (
        local.report["organs"]["liver"]["voxels"] == statuses["nifti"]["results"]["liver"]["voxels"]
    )
    assert "salipViewer" in (tmp_path / "nifti.viewer").read_text()
    _local(scans["png"], tmp_path, tiny_models, output=tmp_path / "p.png", modality="ct")
    assert (tmp_path / "png.mask").read_bytes() == (tmp_path / "p.png").read_bytes()
    # The SEG reads back with highdicom, its frames those of a local SEG of the series.
    seg = hd.seg.segread(tmp_path / "dicom.seg")
    _local(scans["dicom"], tmp_path, tiny_models, output=tmp_path / "l.dcm")
    mine = hd.seg.segread(tmp_path / "l.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver"]
    np.testing.assert_array_equal(seg.pixel_array, mine.pixel_array)


def test_segment_server_writes_the_files_of_a_local_run(server, scans, tmp_path, tiny_models,
                                                        monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    code = main([
        "segment", str(scans["nifti"]), "--organ", "liver", "--server", server.url,
        "--token-file", str(server.token_file), "-o", "remote.nii.gz", "--report", "r.json",
        "--viewer", "v.html", "-q",
    ])  # fmt: skip
    assert code == 0
    _local(scans["nifti"], tmp_path, tiny_models, output=tmp_path / "local.nii.gz")
    assert (tmp_path / "remote.nii.gz").read_bytes() == (tmp_path / "local.nii.gz").read_bytes()
    assert json.loads((tmp_path / "remote.json").read_text()) == json.loads(
        (tmp_path / "local.json").read_text()
    ) | {"settings": json.loads((tmp_path / "remote.json").read_text())["settings"]}
    assert json.loads((tmp_path / "r.json").read_text())["organs"]["liver"]
    # A DICOM folder is zipped by the client; the SEG is written where -o says.
    series = require_data(TOTALSEG / "example_ct_dicom_uids")
    code = main(["segment", str(series), "--organ", "liver", "--server", server.url,
                 "--token-file", str(server.token_file), "-o", "remote.dcm", "-q"])  # fmt: skip
    assert code == 0
    _local(series, tmp_path, tiny_models, output=tmp_path / "local.dcm")
    np.testing.assert_array_equal(
        hd.seg.segread(tmp_path / "remote.dcm").pixel_array,
        hd.seg.segread(tmp_path / "local.dcm").pixel_array,
    )
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary
    # Server-side settings are refused before anything is sent; nothing is written.
    code = main(["segment", str(scans["png"]), "--organ", "liver", "--server", server.url,
                 "--token-file", str(server.token_file), "--device", "cpu", "-o", "x.png"])  # fmt: skip
    assert code == 1 and not (tmp_path / "x.png").exists()


def test_health_schema_and_targets(server):
    assert httpx.get(f"{server.url}/healthz").json()["status"] == "ok"
    assert httpx.get(f"{server.url}/readyz").json()["ready"] is True
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/files/{kind}",
        "/v1/targets",
    } <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    with server.http() as http:
        names = {t["name"] for t in http.get("/v1/targets").json()["targets"]}
    assert {"liver", "spleen", "kidney_left"} <= names


def test_every_route_needs_the_token_in_the_header(server, scans):
    routes = [("GET", "/v1/jobs"), ("GET", "/v1/targets"), ("POST", "/v1/jobs"),
              ("GET", "/v1/jobs/00000000-0000-4000-8000-000000000000"),
              ("DELETE", "/v1/jobs/00000000-0000-4000-8000-000000000000")]  # fmt: skip
    token = server.token
    for method, route in routes:
        for headers, query in [({}, ""), ({"Authorization": "Bearer wrong"}, ""),
                               ({}, f"?token={token}"), ({}, f"?access_token={token}"),
                               ({"Authorization": f"Basic {token}"}, "")]:  # fmt: skip
            answer = httpx.request(method, f"{server.url}{route}{query}", headers=headers)
            assert answer.status_code == 401, (method, route, headers, query)
            assert answer.json()["error"].startswith("a valid token is needed")
    with server.http() as http:  # the same routes with the token: not 401
        assert http.get("/v1/jobs").status_code == 200
    assert token not in server.log_text()  # never logged, not even from a query string
    assert "GET /v1/jobs 401" in server.log_text()


def _bad_uploads(tmp_path):
    """(name, file, request, status, words of the error) for each bad submission."""
    ct = require_data(TOTALSEG / "example_ct_sm.nii.gz").read_bytes()
    truncated = tmp_path / "cut.nii.gz"
    truncated.write_bytes(ct[: len(ct) // 2])
    header_only = tmp_path / "hdr.nii"
    header_only.write_bytes(gzip.decompress(ct)[:400])
    slip = tmp_path / "slip.zip"
    with zipfile.ZipFile(slip, "w") as archive:
        archive.writestr("../../etc/evil.dcm", b"x" * 200)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        for k in range(3):  # 96 MiB of zeros, over 8 bytes x the server's 8M voxels
            archive.writestr(f"s{k}.dcm", b"\0" * (32 << 20))
    big = tmp_path / "big.nii.gz"
    big.write_bytes(np.random.default_rng(0).bytes(9 << 20))
    gap = zip_folder(require_data(TOTALSEG / "example_ct_dicom"), tmp_path / "gap.zip", skip=9)
    ok = json.dumps({"organs": ["liver"]})
    return [
        ("truncated NIfTI", truncated, ok, 422, "upload"),
        ("NIfTI without data", header_only, ok, 422, "upload"),
        ("zip with ../", slip, ok, 400, "unsafe member name"),
        ("zip bomb", bomb, ok, 422, "unpacks to"),
        ("over the limit", big, ok, 413, "limit of 8 MiB"),
        ("unknown organ", truncated, json.dumps({"organs": ["flux capacitor"]}), 422, "unknown organ"),
        ("series with a gap", gap, ok, 422, "gap"),
        ("garbage JSON", truncated, "{organs: liver", 400, "not JSON"),
        ("not a request object", truncated, "[1, 2]", 400, "JSON object"),
        ("unknown output", truncated, json.dumps({"organs": ["liver"], "outputs": ["x"]}), 422, "unknown output"),
        ("server setting", truncated, json.dumps({"organs": ["liver"], "settings": {"device": "cuda"}}), 422, "server's"),
        ("unknown type", truncated, ok, 415, "not a file type"),
    ]  # fmt: skip


def _chunked_upload(size: int):
    yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.nii.gz"\r\n\r\n'
    for _ in range(size >> 20):
        yield b"\0" * (1 << 20)


def test_bad_input_is_refused_in_one_line_and_nothing_is_kept(server, tmp_path):
    before = server.contents()
    for what, path, request, status, words in _bad_uploads(tmp_path):
        name = "scan.txt" if what == "unknown type" else None
        answer = server.submit(path, request, name=name)
        assert answer.status_code == status, (what, answer.text)
        error = answer.json()["error"]
        assert words in error and "\n" not in error and "Traceback" not in error, (what, error)
        assert str(server.data) not in error, (what, error)  # no server path shown
        assert server.contents() == before, what
    with server.http() as http:
        assert http.post("/v1/jobs", data={"request": "{}"}).status_code == 400  # no file
        # Chunked, with no Content-Length to refuse it by: counted as it streams in.
        answer = http.post("/v1/jobs", content=_chunked_upload(12 << 20),
                           headers={"Content-Type": "multipart/form-data; boundary=xyz"})  # fmt: skip
        assert answer.status_code == 413 and "limit of 8 MiB" in answer.json()["error"]
        assert http.get("/v1/jobs/../../etc/passwd").status_code == 404
        assert http.get("/v1/jobs/not-a-uuid").json()["error"].startswith("no job")
    assert server.contents() == before
    assert "Traceback" not in server.log_text()


def test_files_delete_and_cancel(server, scans, tmp_path):
    # Seconds long, so that the job submitted next is surely still queued behind it.
    slow = json.dumps(
        {"organs": ["liver"], "settings": {"points_per_side": 12, "strategy": "slices"}}
    )
    png = json.dumps({"organs": ["liver"], "settings": {"modality": "ct"}})
    with server.http() as http:
        running = server.submit(scans["nifti"], slow).json()["id"]
        server.wait(running, until=("running",))
        queued = server.submit(scans["png"], png).json()["id"]  # behind it on the one worker
        status = http.get(f"/v1/jobs/{queued}").json()
        assert status["state"] == "queued" and status["progress"]["jobs_ahead"] == 0
        assert http.get(f"/v1/jobs/{queued}/files/mask").status_code == 409
        assert http.delete(f"/v1/jobs/{queued}").json()["state"] == "cancelled"
        assert not (server.data / "jobs" / queued).exists()
        assert http.get(f"/v1/jobs/{queued}").json()["state"] == "cancelled"
        # A running job is cancelled when its worker returns; its files go with it.
        assert http.delete(f"/v1/jobs/{running}").json()["state"] == "cancelling"
        assert server.wait(running)["state"] == "cancelled"
        assert not (server.data / "jobs" / running).exists()
        # A finished job: files by kind, then deleted with them.
        done = server.submit(scans["png"], png).json()["id"]
        assert server.wait(done)["state"] == "done"
        assert http.get(f"/v1/jobs/{done}/files/mask").headers["content-type"] == "image/png"
        assert http.get(f"/v1/jobs/{done}/files/seg").status_code == 404  # not asked for
        assert http.get(f"/v1/jobs/{done}/files/nope").status_code == 404
        (server.data / "jobs" / done / "out" / "report.json").unlink()  # gone by hand
        assert http.get(f"/v1/jobs/{done}/files/report").status_code == 410
        assert http.delete(f"/v1/jobs/{done}").json()["state"] == "deleted"
        assert not (server.data / "jobs" / done).exists()
        assert http.get(f"/v1/jobs/{done}").status_code == 404
        assert done not in {j["id"] for j in http.get("/v1/jobs").json()["jobs"]}


@pytest.mark.parametrize("request_text", ['{"organs": []}', '{"organs": "liver", "x": 1}'])
def test_malformed_requests_name_the_fields(server, scans, request_text):
    answer = server.submit(scans["png"], request_text)
    assert answer.status_code == 400
    assert "organs" in answer.json()["error"] or "unknown request key" in answer.json()["error"]


def test_a_finished_jobs_viewer_opens_in_a_browser_with_the_token_header(server, scans):
    """Headless Chromium (Debian's, through Playwright) opens the viewer through the
    server, the token sent as a header; the page makes no other request."""
    from tests.outputs.viewer.test_viewer import CHROMIUM_ARGS, _browser

    sync_playwright, chromium = _browser()
    job = server.submit(scans["nifti"], LIVER).json()["id"]
    assert server.wait(job)["state"] == "done"
    url = f"{server.url}/v1/jobs/{job}/files/viewer"
    requests, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            assert page.goto(url).status == 401  # without the token
            page.set_extra_http_headers({"Authorization": f"Bearer {server.token}"})
            answer = page.goto(url)
            assert answer.status == 200
            assert answer.headers["content-type"] == "text/html; charset=utf-8"
            assert page.evaluate("window.salipViewer.ready.then(r => r.slices)") == 30
            assert "liver" in page.inner_text("#organs")
        finally:
            browser.close()
    assert errors == []
    assert [r for r in requests if r != url and not r.startswith("data:")] == []
