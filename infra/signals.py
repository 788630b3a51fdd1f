"""Waiting for the signal that stops a process (SIGTERM from an orchestrator, SIGINT from Ctrl-C)."""

from __future__ import annotations

import asyncio
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def stop_requested() -> signal.Signals:
    """Returns once SIGTERM or SIGINT arrives, with the signal; the process then drains in its own way. From then on
    both signals are ignored: a repeat (Ctrl-C reaches every process of the terminal, and a supervisor forwards
    SIGTERM too) must neither cut the drain short nor turn a clean exit into death by signal."""
    received: asyncio.Future[signal.Signals] = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()

    def stop(signum: signal.Signals) -> None:
        if not received.done():
            received.set_result(signum)

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop, signum)
    try:
        return await received
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
            signal.signal(signum, signal.SIG_IGN)
