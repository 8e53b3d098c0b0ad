"""Running ``async def`` tests without a plugin, shared by the suites' conftests.

Each async test runs in a fresh event loop under a timeout, so a bug fails
instead of hanging. Fixture values that must live in the test's own loop are
:class:`AsyncFixture` instances: the runner enters them (``async with``) inside
that loop and leaves them when the test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Callable
from typing import Any

import pytest


class AsyncFixture:
    """A fixture value entered (``async with``) inside the test's event loop."""

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


def async_test_runner(timeout_s: float) -> Callable[[pytest.Function], bool | None]:
    """A ``pytest_pyfunc_call`` hook running coroutine tests with ``timeout_s``."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
        if not inspect.iscoroutinefunction(pyfuncitem.obj):
            return None
        names = pyfuncitem._fixtureinfo.argnames
        funcargs = {name: pyfuncitem.funcargs[name] for name in names}

        async def run() -> None:
            async with contextlib.AsyncExitStack() as stack:
                kwargs = {}
                for name, value in funcargs.items():
                    if isinstance(value, AsyncFixture):
                        value = await stack.enter_async_context(value)
                    kwargs[name] = value
                await asyncio.wait_for(pyfuncitem.obj(**kwargs), timeout_s)

        asyncio.run(run())
        return True

    return pytest_pyfunc_call
