"""``salip serve``: a segmentation service. An HTTP API (:mod:`~salip.apps.serve.app`) takes
scans and queues jobs in a SQLite database (:mod:`~salip.apps.serve.store`) that survives a
crash; workers that load the models once run them (:mod:`~salip.apps.serve.worker`).
Needs the ``salip[serve]`` extra (FastAPI, uvicorn, python-multipart).
"""

from __future__ import annotations

import ipaddress
import logging

from salip.apps.serve.state import ServeConfig, ServerState, open_server
from salip.core.config import ClusterConfig, SegmentConfig
from salip.core.errors import ConfigError

__all__ = ["ServeConfig", "ServerState", "open_server", "require_serve", "serve"]

logger = logging.getLogger(__name__)


def require_serve() -> None:
    """Raise :class:`ConfigError` naming the extra when FastAPI or uvicorn is missing."""
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"salip serve needs {exc.name}, which is not installed; pip install 'salip[serve]'."
        ) from exc


def serve(config: ServeConfig, defaults: SegmentConfig, cluster: ClusterConfig) -> bool:
    """Run the server until it is interrupted (Ctrl-C, SIGTERM); jobs still running are
    put back in the queue for the next start.

    Returns:
        Whether a worker thread is still inside a job (in torch or ONNX Runtime): the
        caller should end the process without finalising the interpreter under it.
    """
    require_serve()
    import uvicorn

    from salip.apps.serve.app import create_app

    state = open_server(config, defaults, cluster)
    if not _loopback(config.host):
        logger.warning(
            "listening on %s: the API is reachable from the network; put it behind a TLS "
            "proxy, since the token travels in every request",
            config.host,
        )
    app = create_app(state)
    state.dispatcher.start()
    where = config.token_file or "$SALIP_HOME/serve/token"
    logger.info("salip serve on http://%s:%d (token in %s)", config.host, config.port, where)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=config.host, port=config.port, log_config=None, access_log=False,
            limit_concurrency=config.max_connections, timeout_keep_alive=5,
            timeout_graceful_shutdown=5,
        )
    )  # fmt: skip
    try:
        server.run()
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the stop signal once it has shut down: the stop asked for
    finally:
        released = state.dispatcher.stop()
        if released:
            logger.info("%d running job(s) put back in the queue", len(released))
    return state.dispatcher.busy()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
