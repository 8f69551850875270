"""Which events go out, and how: blocking pre-* calls decide the request; post-* calls are queued,
retried with exponential backoff, and drained on shutdown, so they never slow or fail a request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Callable, Iterable, Protocol

from ..observability.metrics import NULL_METRICS, Metrics
from . import DEFAULT_EVENTS, HookContext, HookEvent, HookFailure, HookRejected, HookResponse
from .payload import rejection

log = logging.getLogger("tusfast.hooks")

FALLBACKS = ("allow", "deny")


class Transport(Protocol):
    async def call(self, context: HookContext) -> HookResponse | None: ...


def parse_events(text: str) -> tuple[HookEvent, ...]:
    """`pre-create,post-finish` -> events; `all`, or empty for none."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if names == ["all"]:
        return tuple(HookEvent)
    try:
        return tuple(HookEvent(name) for name in names)
    except ValueError:
        known = ", ".join(event.value for event in HookEvent)
        raise ValueError(f"unknown hook event in {text!r} (known: {known})") from None


class HookDispatcher:
    def __init__(self, transport: Transport, events: Iterable[HookEvent] = DEFAULT_EVENTS, *,
                 fallback: str = "deny", retries: int = 3, backoff: float = 0.5, queue_size: int = 10_000,
                 on_error: Callable[[BaseException, dict[str, object]], None] | None = None) -> None:
        if fallback not in FALLBACKS:
            raise ValueError("hooks fallback must be allow or deny")
        self.transport = transport
        self.events = frozenset(events)
        self.fallback = fallback
        self.retries = retries
        self.backoff = backoff
        self._queue: asyncio.Queue[HookContext] | None = None
        self._queue_size = queue_size
        self._worker: asyncio.Task[None] | None = None
        self._on_error = on_error       # told about queued deliveries that failed for good
        self.metrics: Metrics = NULL_METRICS    # hook calls, failures and latency by event

    def wants(self, event: HookEvent) -> bool:
        return event in self.events

    async def dispatch(self, context: HookContext) -> HookResponse | None:
        if context.event not in self.events:
            return None
        if context.event.blocking:
            return await self._decide(context)
        self._enqueue(context)
        return None

    # ---- blocking ---------------------------------------------------------------------------

    async def _decide(self, context: HookContext) -> HookResponse | None:
        try:
            response = await self._call(context)
        except HookFailure as failure:
            log.warning("%s hook for upload %s failed: %s", context.event.value, context.upload.id, failure)
            if self.fallback == "allow":
                return None
            raise HookRejected(failure.status, f"{context.event.value} hook failed: {_short(failure)}") from None
        if response is not None:
            rejected = rejection(context.event, response)
            if rejected is not None:
                log.info("%s hook rejected upload %s with %d", context.event.value, context.upload.id, rejected.status)
                raise rejected
        return response

    async def _call(self, context: HookContext) -> HookResponse | None:
        try:
            return await self._measured(context)
        except (HookFailure, HookRejected):
            raise
        except Exception as error:      # a Python hook's bug: a failed hook, not a crashed request
            log.exception("%s hook raised", context.event.value)
            raise HookFailure(f"hook raised {type(error).__name__}") from None

    async def _measured(self, context: HookContext) -> HookResponse | None:
        """One transport call, counted in the metrics: a rejection is an answer, not a failure;
        a post-* answered with status >= 400 is a failed delivery."""
        started, failed = time.monotonic(), True
        try:
            response = await self.transport.call(context)
            failed = (not context.event.blocking and response is not None and response.status is not None
                      and response.status >= 400)
            return response
        except HookRejected:
            failed = False
            raise
        finally:
            self.metrics.hook_called(context.event.value, time.monotonic() - started, failed)

    # ---- queued -----------------------------------------------------------------------------

    def _enqueue(self, context: HookContext) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue(self._queue_size)
            self._worker = asyncio.get_running_loop().create_task(self._work(self._queue))
        try:
            self._queue.put_nowait(context)
        except asyncio.QueueFull:
            log.error("hook queue is full: dropped %s for upload %s", context.event.value, context.upload.id)

    async def _work(self, queue: asyncio.Queue[HookContext]) -> None:
        while True:
            context = await queue.get()
            try:
                await self._deliver(context)
            except Exception as error:      # a bug must not stop the queue
                log.exception("%s hook delivery for upload %s crashed", context.event.value, context.upload.id)
                self._report(error, context)
            finally:
                queue.task_done()

    def _report(self, error: BaseException, context: HookContext) -> None:
        if self._on_error is not None:
            self._on_error(error, {"task": "hook-queue", "hook": context.event.value, "upload_id": context.upload.id})

    async def _deliver(self, context: HookContext) -> None:
        for attempt in range(self.retries + 1):
            problem = await self._attempt(context)
            if problem is None:
                return
            if attempt < self.retries:
                log.info("%s hook for upload %s failed (%s); retrying", context.event.value, context.upload.id, problem)
                await asyncio.sleep(self.backoff * 2 ** attempt)
        log.error("%s hook for upload %s failed after %d attempts: %s", context.event.value,
                  context.upload.id, self.retries + 1, problem)
        self._report(HookFailure(f"{context.event.value} hook failed after {self.retries + 1} attempts: {problem}"),
                     context)

    async def _attempt(self, context: HookContext) -> str | None:
        """None if delivered, else what went wrong."""
        try:
            response = await self._call(context)
        except (HookFailure, HookRejected) as failure:
            return str(failure)
        if response is not None and response.status is not None and response.status >= 400:
            return f"status {response.status}"
        return None

    async def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued, for up to `timeout` seconds, then stop the worker."""
        if self._queue is not None:
            try:
                await asyncio.wait_for(self._queue.join(), timeout)
            except TimeoutError:
                log.error("gave up on %d queued hook(s) at shutdown", self._queue.qsize())
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None


def _short(failure: HookFailure) -> str:
    return str(failure)[:200]
