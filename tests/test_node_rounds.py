"""The node's background threads' shape (shared/node/rounds.py): a round that raises is logged and outlived, a wake
starts the next round at once, a stop ends the thread."""
import threading

from support_server import wait_for

from modelsync.shared.node.rounds import run_rounds


def test_a_round_that_raises_is_logged_and_the_thread_goes_on(caplog):
    stopped = threading.Event()
    rounds: list[int] = []

    def round_() -> float:
        rounds.append(len(rounds) + 1)
        if len(rounds) == 1:
            raise RuntimeError("the host changed under us")
        if len(rounds) == 3:
            stopped.set()
        return 0

    with caplog.at_level("ERROR", logger="modelsync.node"):
        run_rounds(round_, stopped, failed_delay=0, failure="modelsync test round failed")
    assert rounds == [1, 2, 3]
    (record,) = [r for r in caplog.records if r.message == "modelsync test round failed"]
    assert record.exc_info and isinstance(record.exc_info[1], RuntimeError)


def test_a_wake_starts_the_next_round_at_once_and_a_stop_ends_the_thread():
    stopped, wake = threading.Event(), threading.Event()
    rounds: list[int] = []

    def round_() -> float:
        rounds.append(len(rounds) + 1)
        return 3600  # the next round only when woken

    thread = threading.Thread(target=run_rounds, args=(round_, stopped),
                              kwargs={"failed_delay": 0, "failure": "unused", "wake": wake}, daemon=True)
    thread.start()
    wait_for(lambda: rounds == [1])
    wake.set()
    wait_for(lambda: rounds == [1, 2])
    stopped.set()
    wake.set()  # as the node's stop does
    thread.join(10)
    assert not thread.is_alive() and rounds == [1, 2]


def test_without_a_wake_the_wait_is_on_the_stop():
    stopped = threading.Event()
    rounds: list[int] = []
    thread = threading.Thread(target=run_rounds, args=(lambda: rounds.append(1) or 3600, stopped),
                              kwargs={"failed_delay": 0, "failure": "unused"}, daemon=True)
    thread.start()
    wait_for(lambda: rounds == [1])
    stopped.set()
    thread.join(10)
    assert not thread.is_alive() and rounds == [1]
