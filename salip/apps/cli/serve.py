"""``salip serve``: run the segmentation service (needs ``pip install 'salip[serve]'``)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from salip.apps.cli.flags import (
    GROUP_TITLES,
    Subparsers,
    add_cluster_flags,
    add_config_flags,
    cluster_options,
    comma_list,
    config_options,
)
from salip.apps.serve import ServeConfig, serve
from salip.core.config import ClusterConfig, SegmentConfig

__all__ = ["add_parser", "run"]

_DEFAULTS = ServeConfig()


def add_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """``salip serve``."""
    parser = sub.add_parser(
        "serve",
        parents=[common],
        help="Run an HTTP segmentation service with a job queue that survives restarts.",
        description="Serve salip over HTTP: clients upload scans, jobs run on workers that "
        "load the models once, results are downloaded. Every route but /healthz and /readyz "
        "needs the bearer token. The settings flags are the server's defaults for every job.",
    )
    group = parser.add_argument_group("service")
    group.add_argument("--host", default=_DEFAULTS.host,
                       help="Address to bind (default: 127.0.0.1, this machine only).")  # fmt: skip
    group.add_argument("--port", type=int, default=_DEFAULTS.port, help="TCP port (default: 8765).")
    group.add_argument(
        "--data", type=Path, default=_DEFAULTS.data,
        help="Data folder: the jobs database, uploads and outputs (default: ./salip-serve).",
    )  # fmt: skip
    group.add_argument(
        "--token-file", type=Path,
        help="File holding the bearer token; created with a random token (mode 0600) if "
        "absent (default: $SALIP_HOME/serve/token).",
    )  # fmt: skip
    group.add_argument(
        "--max-upload", type=int, metavar="MIB", default=_DEFAULTS.max_upload // 2**20,
        help="Largest upload in MiB; larger ones are refused with 413 (default: 2048).",
    )  # fmt: skip
    group.add_argument(
        "--upload-timeout", type=float, metavar="S", default=_DEFAULTS.upload_timeout_s,
        help="Seconds an upload may take (default: 600).",
    )  # fmt: skip
    group.add_argument(
        "--max-attempts", type=int, metavar="N", default=_DEFAULTS.max_attempts,
        help="Starts of a job before it is failed when the server keeps dying while it runs "
        "(default: 3).",
    )  # fmt: skip
    group.add_argument(
        "--max-connections", type=int, metavar="N", default=_DEFAULTS.max_connections,
        help="Connections served at once; more are answered 503 (default: 64).",
    )  # fmt: skip
    group.add_argument(
        "--cors", type=comma_list, default=(), metavar="ORIGINS",
        help="Comma-separated origins allowed to call the API from a browser (default: none).",
    )  # fmt: skip
    add_cluster_flags(parser)
    add_config_flags(parser, list(GROUP_TITLES))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``salip serve`` until interrupted; the exit code."""
    config = ServeConfig(
        host=args.host, port=args.port, data=args.data, token_file=args.token_file,
        max_upload=args.max_upload * 2**20, upload_timeout_s=args.upload_timeout,
        max_attempts=args.max_attempts, cors=tuple(args.cors),
        max_connections=args.max_connections,
    )  # fmt: skip
    defaults = SegmentConfig().replace(**config_options(args))
    if serve(config, defaults, ClusterConfig(**cluster_options(args))):
        # A worker thread is inside torch or ONNX Runtime, and finalising the interpreter
        # under it aborts the process. The queue is committed and the job was put back,
        # so the process ends here, its logs flushed.
        logging.shutdown()
        os._exit(0)
    return 0
