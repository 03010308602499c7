"""The long-polls' wake-ups: a wait ends when its node's orders may have changed (notified from any thread, or before
the wait began), not for another node's, and at its timeout otherwise."""
from __future__ import annotations

import asyncio
import threading

from modelsync.server.transfers import OrderSignals

SHORT = 0.2  # a wait nothing ends


def test_a_notify_from_another_thread_ends_the_wait():
    signals = OrderSignals()

    async def main() -> bool:
        since = signals.version("b")
        waiting = asyncio.ensure_future(signals.wait("b", since, timeout=60))
        await asyncio.sleep(0)
        assert "b" in signals._waiters  # waiting already: the thread's notify must wake it
        threading.Thread(target=signals.notify, args=("b",)).start()
        return await waiting

    assert asyncio.run(main()) is True


def test_a_change_between_reading_the_orders_and_waiting_is_not_lost():
    signals = OrderSignals()
    since = signals.version("b")
    signals.notify("b")  # while the long-poll was reading its orders
    assert asyncio.run(signals.wait("b", since, timeout=60)) is True


def test_another_node_s_change_does_not_end_the_wait_and_the_timeout_does():
    signals = OrderSignals()

    async def main() -> bool:
        waiting = asyncio.ensure_future(signals.wait("b", signals.version("b"), timeout=SHORT))
        await asyncio.sleep(0)
        signals.notify("c")
        return await waiting

    assert asyncio.run(main()) is False
    assert signals._waiters == {}  # nothing left behind


def test_a_holder_change_wakes_every_waiting_node():
    signals = OrderSignals()

    async def main() -> list[bool]:
        waits = [asyncio.ensure_future(signals.wait(node, signals.version(node), timeout=60)) for node in ("b", "c")]
        await asyncio.sleep(0)
        signals.notify_holders_changed()
        return list(await asyncio.gather(*waits))

    assert asyncio.run(main()) == [True, True]
    assert signals.version("b") == 1 and signals.version("c") == 1
