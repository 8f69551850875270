"""One request/response cycle on a connection: its h11 state, its body, its framing decisions."""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Callable

import h11

from .body import ChunkedDecoder, ContentLengthDecoder, Decoder, RequestBody
from .flow import FlowControl
from .messages import FileBody, Headers, HttpRequest, HttpResponse, StreamBody


class BadFraming(Exception):
    pass


def body_decoder(event: h11.Request) -> tuple[int | None, Decoder]:
    """Framing from the head. Content-Length together with Transfer-Encoding is refused outright:
    two framings are how request smuggling starts."""
    names = [name for name, _ in event.headers]
    chunked = b"transfer-encoding" in names
    if chunked and b"content-length" in names:
        raise BadFraming("Content-Length and Transfer-Encoding must not both be sent")
    if chunked:
        return None, ChunkedDecoder()
    length = next((int(value) for name, value in event.headers if name == b"content-length"), 0)
    return length, ContentLengthDecoder(length)


NO_BODY_STATUSES = frozenset({204, 304})

# Statuses http.HTTPStatus lacks but tus uses.
EXTRA_PHRASES = {460: "Checksum Mismatch"}


def reason_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return EXTRA_PHRASES.get(status, "").encode()


@dataclass
class Exchange:
    parser: h11.Connection          # used from here on only to serialize the response
    request: HttpRequest
    responded: bool = False

    @classmethod
    def begin(cls, parser: h11.Connection, event: h11.Request, flow: FlowControl, high_water: int,
              scheme: str, client: str, send_continue: Callable[[], None], splice_from: int | None,
              timeout: float) -> "Exchange":
        size, decoder = body_decoder(event)
        expects = parser.they_are_waiting_for_100_continue and not decoder.done
        body = RequestBody(size, decoder, flow, high_water, send_continue if expects else None,
                           splice_from, timeout)
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in event.headers]
        request = HttpRequest(event.method.decode("ascii"), event.target.decode("latin-1"), headers, body,
                              scheme, client, event.http_version.decode("ascii"))
        return cls(parser, request)

    @property
    def body(self) -> RequestBody:
        return self.request.body

    def encode_response(self, response: HttpResponse, extra_headers: Headers,
                        close: bool) -> list[bytes | FileBody | StreamBody]:
        """Frame the response for the method on the wire: a HEAD reply keeps the application's
        Content-Length (it describes a GET) and sends no body; any other reply's Content-Length is
        its body's length, whatever the application thought (e.g. a POST overridden to HEAD)."""
        is_head = self.request.method == "HEAD"
        headers = [*response.headers, *extra_headers]
        if not is_head:
            headers = [(name, value) for name, value in headers if name.lower() != "content-length"]
            if response.status not in NO_BODY_STATUSES:
                headers.append(("Content-Length", str(response.body_length)))
        if close:
            headers.append(("Connection", "close"))
        out: list[bytes | FileBody | StreamBody] = [self.parser.send(h11.Response(
            status_code=response.status, headers=headers, reason=reason_phrase(response.status)))]
        if not is_head and response.body_length:
            data = response.file if response.file is not None else response.body
            # h11 frames the FileBody by its length and hands it back untouched, for sendfile.
            out += self.parser.send_with_data_passthrough(h11.Data(data=data)) or []  # type: ignore[arg-type]
        out.append(self.parser.send(h11.EndOfMessage()))
        self.responded = True
        return [part for part in out if part]

    @property
    def keep_alive(self) -> bool:
        return self.parser.our_state is h11.DONE

    def unread_body(self) -> int | None:
        """Bytes of body the client still means to send; None when unknown (chunked)."""
        body = self.body
        if body.complete:
            return 0
        return None if body.size is None else body.size - body.received
