"""After a transfer, the host sees the new file without a restart: its checkpoint, LoRA and embedding lists are
refreshed in-process with the calls its own refresh buttons make, never while it generates (a refresh clears and
rebuilds the lists a running generation reads). A refresh waits until the host's job state is idle, then runs under
the host's queue lock (`modules.call_queue.queue_lock`, which every generation holds), so none starts meanwhile."""
from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

log = logging.getLogger("modelsync.extension")

BUSY_POLL_SECONDS = 0.5


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def refresh_checkpoints() -> bool:
    """The checkpoint dropdown's refresh (modules.shared_items.refresh_checkpoints)."""
    sd_models = _module("modules.sd_models")
    if sd_models is None or not hasattr(sd_models, "list_models"):
        return False
    sd_models.list_models()
    return True


def refresh_loras() -> bool:
    """The LoRA tab's refresh: the built-in LoRA extension's `networks.list_available_networks()` (Forge:
    extensions-builtin/sd_forge_lora, A1111: extensions-builtin/Lora; a flat module it imported itself, so only
    taken from sys.modules, never imported by that common name here)."""
    networks = sys.modules.get("networks")
    if networks is None or not hasattr(networks, "list_available_networks"):
        return False
    networks.list_available_networks()
    return True


def _embedding_databases() -> Iterator[object]:
    """Forge keeps the embeddings its Textual Inversion tab lists in modules.ui_extra_networks_textual_inversion;
    A1111 in modules.sd_hijack.model_hijack."""
    forge_tab = sys.modules.get("modules.ui_extra_networks_textual_inversion")
    if getattr(forge_tab, "embedding_db", None) is not None:
        yield forge_tab.embedding_db
    hijack = getattr(_module("modules.sd_hijack"), "model_hijack", None)
    if getattr(hijack, "embedding_db", None) is not None:
        yield hijack.embedding_db


def refresh_embeddings() -> bool:
    found = False
    for db in _embedding_databases():
        reload = db.load_textual_inversion_embeddings
        extra = {"sync_with_sd_model": False} if "sync_with_sd_model" in inspect.signature(reload).parameters else {}
        reload(force_reload=True, **extra)
        found = True
    return found


REFRESHERS: dict[str, Callable[[], bool]] = {
    "checkpoint": refresh_checkpoints,
    "lora": refresh_loras,
    "embedding": refresh_embeddings,
}


def host_busy() -> bool:
    """Whether the host is generating: `shared.state.job` names a job, or `job_count` is not 0 (-1 from begin())."""
    state = getattr(_module("modules.shared"), "state", None)
    if state is None:
        return False
    return bool(getattr(state, "job", "")) or bool(getattr(state, "job_count", 0))


@contextlib.contextmanager
def host_queue() -> Iterator[None]:
    lock = getattr(_module("modules.call_queue"), "queue_lock", None)
    if lock is None:
        yield
        return
    with lock:
        yield


@dataclass(frozen=True)
class Refreshed:
    role: str
    at: float  # wall-clock time
    done: bool  # False: the host has no such list (e.g. no LoRA extension)


class HostRefresher:
    """A thread of its own: `request(role)` returns at once; the refresh follows once the host is idle."""

    def __init__(self, busy: Callable[[], bool] = host_busy, poll_seconds: float = BUSY_POLL_SECONDS):
        self._busy = busy
        self._poll = poll_seconds
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refreshed: deque[Refreshed] = deque(maxlen=50)  # the latest last
        self.waiting_for_host = False  # a refresh waits for a generation to end

    def request(self, role: str | None) -> None:
        if role not in REFRESHERS:
            return
        with self._lock:
            self._pending.add(role)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="modelsync-host-refresh", daemon=True)
                self._thread.start()
        self._wake.set()

    @property
    def pending(self) -> list[str]:
        """The lists waiting to be refreshed."""
        with self._lock:
            return sorted(self._pending)

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            while self._pending and not self._stop.is_set():
                self._refresh_when_idle()

    def _refresh_when_idle(self) -> None:
        while self._busy():
            if not self.waiting_for_host:
                log.info("modelsync: the host is generating; its model lists are refreshed when it ends")
            self.waiting_for_host = True
            if self._stop.wait(self._poll):
                return
        with host_queue():
            if self._busy():  # a generation began between the look and the lock
                return
            self.waiting_for_host = False
            with self._lock:
                roles, self._pending = sorted(self._pending), set()
            for role in roles:
                try:
                    done = REFRESHERS[role]()
                except Exception:  # a host's refresh that fails must not end the thread
                    log.exception("modelsync: refreshing the host's %s list failed", role)
                    done = False
                self.refreshed.append(Refreshed(role, time.time(), done))
                log.info("modelsync: the host's %s list %s", role, "refreshed" if done else "cannot be refreshed here")
