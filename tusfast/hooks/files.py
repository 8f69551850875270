"""File hooks (`--hooks-dir DIR`): run the executable named after the event, JSON on stdin.

Exit code 0 accepts; for blocking events stdout may hold a response in the HTTP hook's format
(tusd v2 JSON). A non-zero exit rejects a blocking event (with the response on stdout, if any, else
400) and counts as a failed delivery for post-* events.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from . import HookContext, HookFailure, HookResponse, HookTimeout
from .payload import decode_response, encode_request

log = logging.getLogger("tusfast.hooks")


class FileTransport:
    def __init__(self, directory: str | os.PathLike[str], format: str = "tusd", timeout: float = 10.0) -> None:
        self.directory = Path(directory)
        self.format = format
        self.timeout = timeout

    def executable(self, context: HookContext) -> Path | None:
        path = self.directory / context.event.value
        return path if path.is_file() and os.access(path, os.X_OK) else None

    async def call(self, context: HookContext) -> HookResponse | None:
        path = self.executable(context)
        if path is None:
            return None     # no hook for this event, as in tusd
        code, stdout = await self._run(path, encode_request(context, self.format), context)
        if code == 0:
            return decode_response(context.event, 200, stdout, self.format)
        try:
            answer = decode_response(context.event, 200, stdout, "tusd")
        except HookFailure:
            answer = HookResponse()
        status = answer.status if answer.status and answer.status >= 400 else 400
        return HookResponse(status, answer.body or f"rejected by {context.event.value} hook", answer.headers,
                            reject_upload=True, reject_termination=True, reject_access=True)

    async def _run(self, path: Path, payload: bytes, context: HookContext) -> tuple[int, bytes]:
        try:
            process = await asyncio.create_subprocess_exec(
                str(path), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, cwd=self.directory, env=self._env(context))
        except OSError as error:
            raise HookFailure(f"cannot run hook {path}: {error}") from None
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(payload), self.timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise HookTimeout(f"hook {path} did not finish within {self.timeout:g}s") from None
        if stderr:
            log.info("hook %s: %s", path.name, stderr.decode("utf-8", "replace").strip()[:2000])
        return process.returncode or 0, stdout

    @staticmethod
    def _env(context: HookContext) -> dict[str, str]:
        """tusd v1's environment variables, on top of ours."""
        upload = context.upload
        return {**os.environ, "TUS_ID": upload.id, "TUS_SIZE": str(upload.length or 0),
                "TUS_OFFSET": str(upload.offset), "TUSFAST_HOOK": context.event.value}
