"""What a face says about the central server, in sentences: how the last contact went, what went wrong and what to
do, the waiting push and when it is tried again (never a time already past), the last push and heartbeat."""
from __future__ import annotations

import time

from .config import NodeConfig
from .contact import ANSWERED, NO_ANSWER, NOT_CONTACTED, REFUSED, PushStatus


def status_line(config: NodeConfig, status: PushStatus, push_waiting: bool, failures: int, now: float | None = None) -> str:
    """`failures`: the failed pushes in a row."""
    now = time.time() if now is None else now
    if not config.server_url:
        return _sentences(f"No usable central server: {config.server_note}") if config.server_note else \
            "No central server configured: local scan only."
    head = {NOT_CONTACTED: "not contacted yet", ANSWERED: "reachable", NO_ANSWER: "unreachable",
            REFUSED: "answered with an error"}[status.contact]
    sentences = [f"Central server {config.server_url}: {head}", config.server_note, status.error]
    if status.pushing:
        sentences.append("Pushing the inventory now")
    elif push_waiting and status.next_retry is not None:
        wait = status.next_retry - now
        when = f"next try in {wait:.0f} s (at {_clock_time(status.next_retry)})" if wait >= 1 else "next try now"
        sentences.append(f"The push failed {failures} time{'s' if failures != 1 else ''} in a row; the inventory "
                         f"is kept, {when}")
    if status.last_push is not None:
        answer = status.answer
        sentences.append(
            f"Last push accepted {_clock_time(status.last_push)}: added {answer.get('added', 0)}, updated "
            f"{answer.get('updated', 0)}, removed {answer.get('removed', 0)}, unchanged {answer.get('unchanged', 0)}"
            + (f", {len(status.previews_written)} previews written" if status.previews_written else "")
        )
    elif status.contact != NOT_CONTACTED:
        sentences.append("No push accepted yet")
    if status.last_heartbeat is not None:
        sentences.append(f"Last heartbeat {_clock_time(status.last_heartbeat)}")
    return _sentences(*sentences)


def _sentences(*parts: str | None) -> str:
    """Each part as a sentence: capitalised (unless it starts with a URL), ended by a full stop unless it ends
    with one already."""
    out = []
    for part in parts:
        if part:
            if "://" not in part.split(" ", 1)[0]:
                part = part[0].upper() + part[1:]
            out.append(part if part[-1] in ".?!" else part + ".")
    return " ".join(out)


def _clock_time(wall: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall))
