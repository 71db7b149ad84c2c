"""A request body size limit for every route (ASGI middleware): the starting adapter may be up to
`max_update_bytes`, any other body up to `max_message_bytes`. The body is read here, counted as it comes
(with or without Content-Length), answered with 413 once over the limit, else handed on whole."""

from __future__ import annotations

import json


class BodyLimit:
    def __init__(self, app, *, default: int, adapter: int) -> None:
        self.app, self.default, self.adapter = app, default, adapter

    def _limit(self, scope) -> int:
        return self.adapter if scope["method"] == "PUT" and scope["path"].endswith("/adapter") else self.default

    @staticmethod
    async def _too_large(send, limit: int) -> None:
        body = json.dumps({"error": "too_large", "message": f"request body over the limit of {limit} bytes"})
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body.encode()})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self._too_large(send, limit)
            return
        chunks, received, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > limit:
                await self._too_large(send, limit)
                return
            more = message.get("more_body", False)
        pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> dict:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)
