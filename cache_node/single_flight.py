"""The node's one single-flight primitive: at most one piece of work per key at a time.

Every caller that asks for a key while its work runs joins that work instead of starting its
own: upstream fetches (joiners follow the growing file), index revalidations, Glance image
deltas, delta signatures and patches. The work runs in a task owned by the registry, not by
any caller, so a client that goes away never cancels it for the others, and its result still
lands in the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")


class Work(Protocol):
    """Something a registry runs once: a fetch with progress for followers, or a `Call`."""

    async def run(self) -> None: ...


W = TypeVar("W", bound=Work)


class SingleFlight(Generic[W]):
    """Registry of running work by key. `W` is what joiners get while it runs."""

    def __init__(self, on_join: Callable[[], None] | None = None) -> None:
        self._running: dict[str, tuple[W, asyncio.Task[None]]] = {}
        self._on_join = on_join or (lambda: None)

    def get(self, key: str) -> W | None:
        entry = self._running.get(key)
        return entry[0] if entry is not None else None

    def __contains__(self, key: str) -> bool:
        return key in self._running

    def __len__(self) -> int:
        return len(self._running)

    def keys(self) -> frozenset[str]:
        return frozenset(self._running)

    def start(self, key: str, make: Callable[[], W]) -> tuple[W, bool]:
        """Join the work running for `key`, or make and start it. True when started here."""
        entry = self._running.get(key)
        if entry is not None:
            self._on_join()
            return entry[0], False
        work = make()
        task = asyncio.get_running_loop().create_task(self._run(key, work), name=key)
        self._running[key] = (work, task)
        return work, True

    async def _run(self, key: str, work: W) -> None:
        try:
            await work.run()
        finally:
            self._running.pop(key, None)

    async def close(self) -> None:
        """Cancel whatever still runs (node shutdown)."""
        tasks = [task for _, task in self._running.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Call(Generic[T]):
    """A coroutine run once; every joiner awaits the same `result`."""

    def __init__(self, fn: Callable[[], Awaitable[T]]) -> None:
        self._fn = fn
        self.result: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        # Joiners retrieve the exception; nobody may be left with an "unretrieved" warning.
        self.result.add_done_callback(_consume)

    async def run(self) -> None:
        try:
            value = await self._fn()
        except asyncio.CancelledError:
            self.result.cancel()
            raise
        except Exception as exc:  # handed to every joiner
            self.result.set_exception(exc)
        else:
            self.result.set_result(value)


async def run_once(flights: SingleFlight[Call[T]], key: str,
                   fn: Callable[[], Coroutine[Any, Any, T]] | Callable[[], Awaitable[T]]) -> T:
    """Run `fn` once per key however many callers ask concurrently; all get its result."""
    call, _ = flights.start(key, lambda: Call(fn))
    return await asyncio.shield(call.result)


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
