"""Load on a real ``salip serve`` process (loopback, bounded in count and time): 16
clients submit 48 small jobs and poll them; every job ends done, no 5xx, and the status
polls stay fast while jobs run (``benchmarks/serve_load.py``; RESULTS.md has the figures)."""

from __future__ import annotations

import importlib.util

from tests.conftest import REPO, TOTALSEG, require_data


def _bench():
    spec = importlib.util.spec_from_file_location(
        "serve_load", REPO / "benchmarks" / "serve_load.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sixteen_clients_forty_eight_jobs(make_server):
    bench = _bench()
    server = make_server().start()
    png = require_data(TOTALSEG.parent / "slices" / "images" / "amos_0006_90.png")
    figures = bench.run_load(
        server.url, server.token, png, clients=16, jobs=48, timeout_s=600, pid=server.proc.pid
    )
    assert figures["done"] == 48 and figures["unfinished"] == 0, figures
    assert figures["http_5xx"] == 0 and figures["http_4xx"] == 0, figures
    assert figures["polls"] >= 48
    assert figures["poll_p95_ms"] < 200, figures
    # The server's memory after 48 jobs: no growth beyond 25% of what it held at the start.
    assert figures["rss_end_mib"] < 1.25 * figures["rss_start_mib"], figures
