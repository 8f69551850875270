"""HTTP hooks (`--hooks-http URL`): POST the event's JSON to a receiver, with asyncio + h11."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from . import HookContext, HookFailure, HookResponse, HookTimeout
from .payload import decode_response, encode_request, request_headers

MAX_RESPONSE = 1024 * 1024


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    target: str
    tls: bool

    @classmethod
    def parse(cls, url: str) -> "Endpoint":
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"hook URL must be http:// or https://, not {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.hostname, port, target, parts.scheme == "https")

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class HttpTransport:
    def __init__(self, url: str, format: str = "tusd", timeout: float = 10.0,
                 forward_headers: tuple[str, ...] = ()) -> None:
        self.endpoint = Endpoint.parse(url)
        self.format = format
        self.timeout = timeout
        self.forward_headers = forward_headers

    async def call(self, context: HookContext) -> HookResponse:
        body = encode_request(context, self.format)
        headers = [("Host", self.endpoint.authority), ("Content-Length", str(len(body))),
                   ("Connection", "close"), *request_headers(context, self.forward_headers)]
        try:
            async with asyncio.timeout(self.timeout):
                status, answer = await self._post(headers, body)
        except TimeoutError:
            raise HookTimeout(f"{context.event.value} hook did not answer within {self.timeout:g}s") from None
        except (OSError, h11.ProtocolError) as error:
            raise HookFailure(f"{context.event.value} hook at {self.endpoint.authority} failed: {error}") from None
        return decode_response(context.event, status, answer, self.format)

    async def _post(self, headers: list[tuple[str, str]], body: bytes) -> tuple[int, bytes]:
        context = ssl.create_default_context() if self.endpoint.tls else None
        reader, writer = await asyncio.open_connection(self.endpoint.host, self.endpoint.port, ssl=context)
        try:
            connection = h11.Connection(h11.CLIENT)
            request = h11.Request(method="POST", target=self.endpoint.target, headers=headers)
            writer.write(connection.send(request) + connection.send(h11.Data(data=body))
                         + connection.send(h11.EndOfMessage()))
            await writer.drain()
            return await _read_response(connection, reader)
        finally:
            writer.close()


async def _read_response(connection: h11.Connection, reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status = 0
    body = bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_RESPONSE:
                raise HookFailure("hook response is larger than 1 MiB")
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return status, bytes(body)
