"""The `handler_kit` fixture for a handler author's own project, shipped as the `pytest11` entry point `hypercard`:
no configuration. An async test that uses it runs on an event loop of the plugin's own (no asyncio_mode, no
pytest-asyncio needed; where another plugin already runs async tests, that one does), and the kit's database is
the one HYPERCARD_TEST_DATABASE names (its tables and rows are rolled back when the kit closes).

    async def test_a_low_balance_is_noted(handler_kit):
        async with handler_kit("LOW_BALANCE", modules=["low_balance.handlers"]) as kit:
            run = await kit.run(LowBalance(account_no="6200123456789012", balance=3))
            assert run.outcome == Outcome.HANDLED
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

from workers import testing
from workers.registry import load_handler_modules

DATABASE_VARIABLE = "HYPERCARD_TEST_DATABASE"
DEFAULT_DATABASE = "postgresql://postgres@127.0.0.1:5432/test"
KitOpener = Callable[..., AbstractAsyncContextManager[testing.HandlerKit]]


@pytest.fixture
def handler_kit() -> KitOpener:
    """`handler_kit(kind, modules=[...])`: `workers.testing.handler_kit` on HYPERCARD_TEST_DATABASE's database, with
    the installed packages' handlers loaded (their entry points), so `modules` is needed only for what is not."""
    load_handler_modules([])
    return functools.partial(testing.handler_kit, database_url=os.environ.get(DATABASE_VARIABLE, DEFAULT_DATABASE))


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an async test that uses the kit in a loop of its own, unless another plugin made it a plain function."""
    test = pyfuncitem.obj
    if "handler_kit" not in pyfuncitem.fixturenames or not inspect.iscoroutinefunction(test):
        return None
    arguments = {name: pyfuncitem.funcargs[name] for name in inspect.signature(test).parameters}
    asyncio.run(test(**arguments))
    return True
