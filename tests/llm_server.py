"""A loopback OpenAI-compatible chat-completions server for tests.

It answers ``POST /v1/chat/completions`` from a script of replies, one per request (the
last one repeats), and records every request's headers and JSON body. The real ``openai``
client talks to it over HTTP, so retries, status codes and parsing are exercised for real.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted reply: an HTTP status and either chat content or a raw body.

    ``content_type`` is the reply's Content-Type header (e.g. "text/html" for a proxy's
    error page).
    """

    status: int = 200
    content: str | None = None
    raw: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


def descriptions_reply(descriptions: list[Any]) -> Reply:
    """A 200 reply whose message content is ``{"descriptions": [...]}``."""
    return Reply(content=json.dumps({"descriptions": descriptions}))


def definition_reply(definition: dict[str, Any], **extra: Any) -> Reply:
    """A 200 reply whose message content is a target definition, with ``extra`` keys (e.g.
    ``descriptions=[...]``, so that one reply answers both kinds of request)."""
    return Reply(content=json.dumps({**definition, **extra}))


class LoopbackLLM:
    """Server state: the reply script and the requests seen."""

    def __init__(self, poll_interval: float = 0.5) -> None:
        """``poll_interval``: seconds between the server's shutdown checks (what
        :meth:`stop` waits at most)."""
        self.script: list[Reply] = []
        self.requests: list[dict[str, Any]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(poll_interval,), daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def user_messages(self) -> list[str]:
        """The user message of every request seen, in order."""
        return [
            m["content"]
            for r in self.requests
            for m in r["body"].get("messages", [])
            if m.get("role") == "user"
        ]

    def start(self) -> LoopbackLLM:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next(self) -> Reply:
        if not self.script:
            return Reply(status=500, raw='{"error": {"message": "no scripted reply"}}')
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                state.requests.append(
                    {
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                    }
                )
                reply = state._next()
                if reply.raw is not None:
                    payload = reply.raw
                elif reply.status == 200:
                    payload = json.dumps(
                        {
                            "id": f"chatcmpl-{len(state.requests)}",
                            "object": "chat.completion",
                            "created": 0,
                            "model": "loopback-llm-1",
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": reply.content},
                                    "finish_reason": "stop",
                                }
                            ],
                            "usage": {
                                "prompt_tokens": 1,
                                "completion_tokens": 1,
                                "total_tokens": 2,
                            },
                        }
                    )
                else:
                    payload = json.dumps({"error": {"message": f"scripted {reply.status}"}})
                data = payload.encode("utf-8")
                self.send_response(reply.status)
                self.send_header("content-type", reply.content_type)
                self.send_header("content-length", str(len(data)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler
