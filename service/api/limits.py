"""Request body size limit, enforced while the body streams in (before any parsing)."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["BodyLimit"]

# Room for the multipart framing and form fields around the weights file.
_OVERHEAD = 1024 * 1024


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: 413 for bodies larger than `ESNAC_MAX_UPLOAD_MB` (+ 1 MiB of framing).

    Starlette would otherwise spool a whole multipart upload to disk before the route can look
    at its size; this refuses on the Content-Length header, or as soon as a streamed body
    passes the limit.
    """

    def __init__(self, app: Any, max_upload_mb: int) -> None:
        self.app = app
        self.max_upload_mb = max_upload_mb
        self.max_bytes = max_upload_mb * 1024 * 1024 + _OVERHEAD

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(send)
            return
        received = 0
        started = False

        async def counting_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Any) -> None:
        body = json.dumps(
            {"detail": f"request body larger than ESNAC_MAX_UPLOAD_MB={self.max_upload_mb} MiB"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
