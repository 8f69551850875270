"""Log output: text or JSON lines, and the access log (one line per request).

Nothing sensitive goes into a line: no header values, no query strings (they may carry tokens),
no request bodies.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Sequence

ACCESS = logging.getLogger("tusfast.access")
LOG_FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; an access record's fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        document.update(getattr(record, "fields", {}))
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)


def configure_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def client_address(peer: str, headers: Sequence[tuple[str, str]], behind_proxy: bool) -> str:
    """The client as the access log names it: the first X-Forwarded-For hop when we trust proxies.
    `headers`: the request's, names lower-cased."""
    if behind_proxy:
        forwarded = next((value for name, value in headers if name == "x-forwarded-for"), "")
        first = forwarded.split(",")[0].strip()
        if first and len(first) <= 64:
            return first
    return peer


class AccessLog:
    def __init__(self, behind_proxy: bool = False) -> None:
        self._behind_proxy = behind_proxy

    def record(self, method: str, target: str, status: int, received: int, sent: int, seconds: float,
               upload_id: str, peer: str, headers: Sequence[tuple[str, str]]) -> None:
        if not ACCESS.isEnabledFor(logging.INFO):
            return
        fields = {"method": method, "path": target.split("?", 1)[0], "status": status, "bytes_in": received,
                  "bytes_out": sent, "duration_ms": round(seconds * 1000, 3), "upload_id": upload_id,
                  "remote": client_address(peer, headers, self._behind_proxy)}
        message = (f'{fields["remote"]} "{method} {fields["path"]}" {status} in={received} out={sent} '
                   f'{fields["duration_ms"]:.1f}ms' + (f" id={upload_id}" if upload_id else ""))
        # Made and handled here rather than through ACCESS.info: that would walk the stack for the
        # calling line, the same line on every request, at a cost the busiest request path feels.
        ACCESS.handle(ACCESS.makeRecord(ACCESS.name, logging.INFO, __file__, 0, message, (), None,
                                        extra={"fields": fields}))


class NullAccessLog(AccessLog):
    def record(self, method: str, target: str, status: int, received: int, sent: int, seconds: float,
               upload_id: str, peer: str, headers: Sequence[tuple[str, str]]) -> None:
        return None
