"""Python hooks for embedding: a plain function or coroutine function `fn(context) -> HookResponse | None`.

It may also raise HookRejected to reject a blocking event.
"""

from __future__ import annotations

import inspect

from . import HookCallable, HookContext, HookResponse


class CallableTransport:
    def __init__(self, function: HookCallable) -> None:
        self.function = function

    async def call(self, context: HookContext) -> HookResponse | None:
        result = self.function(context)
        if inspect.isawaitable(result):
            result = await result
        return result
