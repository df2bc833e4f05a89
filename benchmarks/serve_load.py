"""Load on ``salip serve``: concurrent clients submit small jobs and poll them.

    python benchmarks/serve_load.py --url http://127.0.0.1:8765 --token-file TOKEN \\
        --pid SERVER_PID --scan slice.png --clients 16 --jobs 48 --json load.json

Each of ``--clients`` threads submits its share of ``--jobs`` jobs (one organ, the scan
given; 2D images are sent with ``modality=ct``), then polls every job it submitted every
``--poll`` seconds until all have ended, timing each poll. Loopback only, and bounded: the
run stops at ``--timeout`` seconds whatever happens.

Reports jobs done, failed and not finished, HTTP 5xx answers, jobs per hour, the p50 and
p95 latency of the status polls made while jobs were running, and the server's resident
memory (VmRSS of ``--pid``, read from /proc) before and after.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from salip.api.service import FINAL_STATES

__all__ = ["rss_kib", "run_load"]


def rss_kib(pid: int) -> int:
    """The resident memory of process ``pid`` in KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _client(url: str, token: str, scan: Path, count: int, poll_s: float, deadline: float,
            out: dict[str, Any]) -> None:  # fmt: skip
    """One client: submit ``count`` jobs, then poll them until they end or ``deadline``."""
    request = {"organs": ["liver"], "settings": {}}
    if scan.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
        request["settings"]["modality"] = "ct"
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                      timeout=60) as http:  # fmt: skip
        jobs = []
        for _ in range(count):
            with open(scan, "rb") as handle:
                answer = http.post("/v1/jobs", files={"file": (scan.name, handle)},
                                   data={"request": json.dumps(request)})  # fmt: skip
            out["codes"].append(answer.status_code)
            if answer.status_code == 202:
                jobs.append(answer.json()["id"])
        states = dict.fromkeys(jobs, "queued")
        while time.monotonic() < deadline and any(s not in FINAL_STATES for s in states.values()):
            for job in [j for j, s in states.items() if s not in FINAL_STATES]:
                start = time.perf_counter()
                answer = http.get(f"/v1/jobs/{job}")
                took = time.perf_counter() - start
                out["codes"].append(answer.status_code)
                if answer.status_code == 200:
                    states[job] = answer.json()["state"]
                    out["polls"].append(took)
            time.sleep(poll_s)
        out["states"].update(states)


def run_load(url: str, token: str, scan: Path, *, clients: int = 16, jobs: int = 48,
             poll_s: float = 0.25, timeout_s: float = 900.0, pid: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Run the load (see the module docstring); the figures as a dict."""
    out: dict[str, Any] = {"codes": [], "polls": [], "states": {}}
    deadline = time.monotonic() + timeout_s
    shares = [jobs // clients + (k < jobs % clients) for k in range(clients)]
    rss_start = rss_kib(pid) if pid else None
    start = time.perf_counter()
    threads = [
        threading.Thread(target=_client, args=(url, token, scan, n, poll_s, deadline, out))
        for n in shares
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0) + 30)
    seconds = time.perf_counter() - start
    states = list(out["states"].values())
    polls = np.array(out["polls"]) * 1000 if out["polls"] else np.zeros(1)
    return {
        "clients": clients,
        "jobs": jobs,
        "done": states.count("done"),
        "failed": states.count("failed"),
        "unfinished": jobs - states.count("done") - states.count("failed"),
        "http_5xx": sum(code >= 500 for code in out["codes"]),
        "http_4xx": sum(400 <= code < 500 for code in out["codes"]),
        "seconds": round(seconds, 1),
        "jobs_per_hour": round(states.count("done") / seconds * 3600, 1),
        "polls": len(out["polls"]),
        "poll_p50_ms": round(float(np.percentile(polls, 50)), 1),
        "poll_p95_ms": round(float(np.percentile(polls, 95)), 1),
        "rss_start_mib": round(rss_start / 1024, 1) if rss_start else None,
        "rss_end_mib": round(rss_kib(pid) / 1024, 1) if pid else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8765")
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--scan", type=Path, required=True)
    parser.add_argument("--pid", type=int, help="The server's process id, for its memory.")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=48)
    parser.add_argument("--poll", type=float, default=0.25)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://127.", "http://localhost")):
        parser.error("--url must be a loopback address: this is a load test.")
    token = args.token_file.read_text().strip()
    figures = run_load(args.url, token, args.scan, clients=args.clients, jobs=args.jobs,
                       poll_s=args.poll, timeout_s=args.timeout, pid=args.pid)  # fmt: skip
    sys.stdout.write(json.dumps(figures, indent=2) + "\n")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
