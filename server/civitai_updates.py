"""Civitai update checks: for each Civitai model the fleet holds a version of, the central server asks
`GET /api/v1/models/{id}` at most once per MODELSYNC_UPDATE_CHECK_HOURS (default a day), taking its turns from the
Civitai worker's one rate (`CivitaiRate`), and records per registry model the newer version (shared/civitai/updates.py
says which counts). A 429, a server error or a timeout pauses the fleet's rate, is recorded as the check's error and
tried again later; it never changes what the last answer said. A model whose held version changes (a new model of the
same Civitai model arrives, a match is rejected) gets its result again from the stored answer, without asking.

`order_update` puts a model's newer version on every node that holds the old one (the admin's one click).
"""
from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable

import sqlite_utils
from modelsync.shared.catalog import write_transaction
from modelsync.shared.civitai.client import CivitaiClient
from modelsync.shared.civitai.updates import HeldVersion, as_version, newer_version

from .civitai_worker import CivitaiRate
from .config import ServerConfig
from .errors import ApiError
from .registry import Registry, iso, parse_iso, utc_now
from .webhooks.events import emit

if TYPE_CHECKING:
    from .context import ServerContext

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 60.0  # a failed check is tried again after this, doubling, at most the check interval
STALE_BATCH = 200  # results recomputed from stored answers per step
HELD = "EXISTS (SELECT 1 FROM model_server_availability a WHERE a.model_id = m.id)"
# a result counts only for the Civitai model and version the registry model has now
CURRENT = "u.model_id = m.id AND u.civitai_model_id = m.civitai_id AND u.held_version_id = m.civitai_version_id"


def version_page(base_url: str, civitai_model_id: int, version_id: int) -> str:
    """The version's page on Civitai (the API's `download_url` of an update: a person opens it; no key needed)."""
    return f"{base_url}/models/{civitai_model_id}?modelVersionId={version_id}"


def _stored_answer(answer: dict[str, Any]) -> dict[str, Any]:
    """What is kept of an answer: everything but the (HTML, often long) descriptions."""
    kept = {k: v for k, v in answer.items() if k != "description"}
    kept["modelVersions"] = [{k: v for k, v in version.items() if k != "description"}
                             for version in answer.get("modelVersions") or [] if isinstance(version, dict)]
    return kept


# --- the registry side -------------------------------------------------------------------------------------------
CHECKED = "m.civitai_id IS NOT NULL AND m.civitai_version_id IS NOT NULL AND " + HELD  # the models checked


def due_models(db: sqlite_utils.Database, now: datetime, limit: int) -> list[int]:
    """Civitai model ids the fleet holds a version of, never checked or due again, oldest due first."""
    rows = db.conn.execute(
        f"""SELECT m.civitai_id FROM models m LEFT JOIN civitai_update_checks c ON c.civitai_model_id = m.civitai_id
            WHERE {CHECKED} AND (c.civitai_model_id IS NULL OR c.next_check_at <= ?)
            GROUP BY m.civitai_id ORDER BY MIN(COALESCE(c.next_check_at, '')), m.civitai_id LIMIT ?""",
        [iso(now), limit],
    ).fetchall()
    return [r[0] for r in rows]


def next_due_at(db: sqlite_utils.Database) -> datetime | None:
    """When the next check of a model `due_models` would pick is due (a Civitai model no node holds any more keeps
    its row, but is not due: it must not wake the service)."""
    row = db.conn.execute(
        f"""SELECT MIN(c.next_check_at) FROM civitai_update_checks c
            WHERE EXISTS (SELECT 1 FROM models m WHERE m.civitai_id = c.civitai_model_id AND {CHECKED})"""
    ).fetchone()
    return parse_iso(row[0]) if row else None


def _apply(db: sqlite_utils.Database, base_url: str, civitai_model_id: int, answer: dict[str, Any], now: datetime,
           model_ids: list[int] | None = None) -> list[tuple[int, int]]:
    """Each registry model of this Civitai model (or only `model_ids`) gets its result from the answer; returns the
    (model id, version id) of the updates that are new. Inside the caller's transaction."""
    where, args = "civitai_id = ? AND civitai_version_id IS NOT NULL", [civitai_model_id]
    if model_ids is not None:
        where += f" AND id IN ({', '.join('?' for _ in model_ids)})"
        args += model_ids
    rows = db.conn.execute(
        f"SELECT id, civitai_version_id, civitai_model_version_date, civitai_model_base FROM models WHERE {where}", args
    ).fetchall()
    new: list[tuple[int, int]] = []
    for model_id, held_version_id, held_date, held_base in rows:
        version = newer_version(answer, HeldVersion(held_version_id, held_date, held_base), now)
        before = db.conn.execute("SELECT held_version_id, version_id FROM civitai_updates WHERE model_id = ?",
                                 [model_id]).fetchone()
        db.conn.execute("DELETE FROM civitai_updates WHERE model_id = ?", [model_id])
        db.conn.execute(
            """INSERT INTO civitai_updates (model_id, civitai_model_id, held_version_id, version_id, name, published_at,
                                            base_model, download_url, version, checked_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            [model_id, civitai_model_id, held_version_id,
             version["id"] if version else None, version.get("name") if version else None,
             version.get("publishedAt") if version else None, version.get("baseModel") if version else None,
             version_page(base_url, civitai_model_id, version["id"]) if version else None,
             json.dumps(as_version(answer, version), ensure_ascii=False) if version else None, iso(now)],
        )
        if version and before != (held_version_id, version["id"]):
            new.append((model_id, version["id"]))
            emit(db, "model.update_available", {  # webhooks: in this transaction, delivered later
                "model_id": model_id, "civitai_model_id": civitai_model_id, "held_version_id": held_version_id,
                "version": {"id": version["id"], "name": version.get("name"), "published_at": version.get("publishedAt"),
                            "base_model": version.get("baseModel"),
                            "download_url": version_page(base_url, civitai_model_id, version["id"])}})
    return new


def record_answer(db: sqlite_utils.Database, base_url: str, civitai_model_id: int, answer: dict[str, Any], now: datetime,
                  interval: timedelta) -> list[tuple[int, int]]:
    """Civitai answered (a 404 is the answer "no versions"): store it, the results, and when to ask again."""
    with write_transaction(db):
        db.conn.execute("DELETE FROM civitai_update_checks WHERE civitai_model_id = ?", [civitai_model_id])
        db.conn.execute(
            """INSERT INTO civitai_update_checks (civitai_model_id, checked_at, next_check_at, attempts, error, answer)
               VALUES (?, ?, ?, 0, NULL, ?)""",
            [civitai_model_id, iso(now), iso(now + interval), json.dumps(_stored_answer(answer), ensure_ascii=False)],
        )
        return _apply(db, base_url, civitai_model_id, answer, now)


def record_failure(db: sqlite_utils.Database, civitai_model_id: int, error: str, now: datetime, pause: float,
                   interval: timedelta) -> datetime:
    """A check that got no answer: the last answer and the results stay; due again after a growing delay (at least
    the fleet's pause). Returns when."""
    with write_transaction(db):
        row = db.conn.execute("SELECT attempts FROM civitai_update_checks WHERE civitai_model_id = ?",
                              [civitai_model_id]).fetchone()
        attempts = (row[0] if row else 0) + 1
        delay = min(FIRST_RETRY_SECONDS * 2 ** (attempts - 1), interval.total_seconds())
        due = now + timedelta(seconds=max(delay, pause))
        if row is None:
            db.conn.execute("""INSERT INTO civitai_update_checks (civitai_model_id, next_check_at, attempts, error)
                               VALUES (?, ?, ?, ?)""", [civitai_model_id, iso(due), attempts, error[:1000]])
        else:
            db.conn.execute("""UPDATE civitai_update_checks SET next_check_at = ?, attempts = ?, error = ?
                               WHERE civitai_model_id = ?""", [iso(due), attempts, error[:1000], civitai_model_id])
    return due


def refresh_stale(db: sqlite_utils.Database, base_url: str, now: datetime) -> int:
    """Registry models whose Civitai model was answered but whose own result is missing or for another version:
    their result from the stored answer (no request). Returns how many."""
    rows = db.conn.execute(
        f"""SELECT m.civitai_id, m.id FROM models m
              JOIN civitai_update_checks c ON c.civitai_model_id = m.civitai_id AND c.answer IS NOT NULL
            WHERE m.civitai_version_id IS NOT NULL AND {HELD}
              AND NOT EXISTS (SELECT 1 FROM civitai_updates u WHERE {CURRENT})
            ORDER BY m.civitai_id LIMIT ?""",
        [STALE_BATCH],
    ).fetchall()
    by_model: dict[int, list[int]] = {}
    for civitai_model_id, model_id in rows:
        by_model.setdefault(civitai_model_id, []).append(model_id)
    with write_transaction(db):
        for civitai_model_id, model_ids in by_model.items():
            answer = db.conn.execute("SELECT answer FROM civitai_update_checks WHERE civitai_model_id = ?",
                                     [civitai_model_id]).fetchone()[0]
            _apply(db, base_url, civitai_model_id, json.loads(answer), now, model_ids)
    return len(rows)


# --- the service -------------------------------------------------------------------------------------------------
class UpdateChecks:
    """One background thread; `clock` gives "now" for every stored time (a test moves it on instead of sleeping)."""

    def __init__(self, registry: Registry, config: ServerConfig, rate: CivitaiRate, client: CivitaiClient,
                 clock: Callable[[], datetime] = utc_now):
        self.registry = registry
        self.config = config
        self.rate = rate
        self.client = client
        self.clock = clock
        self.interval = timedelta(hours=config.update_check_hours)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "UpdateChecks":
        self._thread = threading.Thread(target=self._run, name="civitai-update-checks", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self.step()
            except Exception:  # a bug or a broken database must not end the checks for good
                log.exception("Civitai update check failed")
                worked = False
            if not worked:
                self._idle()

    def _idle(self) -> None:
        self._wake.wait(self.idle_seconds())
        self._wake.clear()

    def idle_seconds(self) -> float:
        """How long the service sleeps when nothing is due: until the next check is due, at most the worker's idle
        time (new models of the fleet are noticed within it)."""
        timeout = self.config.worker_idle_seconds
        due = next_due_at(self.registry.db())
        if due is not None:
            timeout = max(0.05, min(timeout, (due - self.clock()).total_seconds()))
        return timeout

    def step(self) -> bool:
        """Refresh results from stored answers, then check one due Civitai model; False when nothing was due."""
        db = self.registry.db()
        refreshed = refresh_stale(db, self.config.civitai_api_base, self.clock())
        due = due_models(db, self.clock(), 1)
        if not due:
            return refreshed > 0
        self.check(due[0])
        return True

    def check(self, civitai_model_id: int) -> str:
        """Ask Civitai about one model in the fleet's rate: "checked", "failed" or "stopped"."""
        if not self.rate.take_turn(self._stop):
            return "stopped"
        result = self.client.model(civitai_model_id)
        db = self.registry.db()
        now = self.clock()
        if result.status in ("found", "not_found"):
            self.rate.succeeded()
            answer = result.data if result.data is not None else {"id": civitai_model_id, "modelVersions": []}
            for model_id, version_id in record_answer(db, self.config.civitai_api_base, civitai_model_id, answer, now,
                                                      self.interval):
                log.info("Civitai: model %s has a newer version %s", model_id, version_id)
            return "checked"
        pause = self.rate.back_off(result.retry_after)
        due = record_failure(db, civitai_model_id, f"{result.status}: {result.error or ''}".strip(": "), now, pause,
                             self.interval)
        log.warning("Civitai update check of model %s failed (%s); again at %s", civitai_model_id, result.error, iso(due))
        return "failed"

    def check_model_now(self, model_id: int) -> str:
        """The admin's "check now" for a registry model (its Civitai model, whenever it was last checked)."""
        row = self.registry.db().conn.execute("SELECT civitai_id, civitai_version_id FROM models WHERE id = ?",
                                              [model_id]).fetchone()
        if row is None:
            raise ApiError(404, f"no model with id {model_id}", "id")
        if row[0] is None or row[1] is None:
            raise ApiError(409, f"model {model_id} has no Civitai model and version to check", "id")
        paused = self.rate.paused_seconds()
        if paused > 0:
            raise ApiError(503, f"Civitai is being given a rest for {paused:.0f} s more (a 429 or a server error)",
                           headers={"Retry-After": str(max(1, round(paused)))})
        return self.check(row[0])


def start(ctx: "ServerContext") -> UpdateChecks | None:
    """Started with the server when the Civitai worker runs and MODELSYNC_UPDATE_CHECKS is on; sets
    ctx.update_checks."""
    if ctx.worker is None or not ctx.config.update_checks:
        return None
    ctx.update_checks = UpdateChecks(ctx.registry, ctx.config, ctx.worker.rate, ctx.worker.client).start()
    return ctx.update_checks


# --- the admin's one click ---------------------------------------------------------------------------------------
def current_update(db: sqlite_utils.Database, model_id: int) -> tuple[int, dict[str, Any]] | None:
    """(version id, the version's JSON) of the model's update, when it has one for the version it holds now."""
    row = db.conn.execute(
        f"""SELECT u.version_id, u.version FROM models m JOIN civitai_updates u ON {CURRENT}
            WHERE m.id = ? AND u.version_id IS NOT NULL""",
        [model_id],
    ).fetchone()
    return (row[0], json.loads(row[1])) if row else None


def holders(db: sqlite_utils.Database, model_id: int, version_id: int, own_server_id: str) -> tuple[list[str], list[dict[str, str]]]:
    """The nodes to put the new version on: those holding the model, but not the server's own node (it runs no agent)
    nor a node that holds the new version already. Returns (nodes, skipped with why)."""
    nodes = [r[0] for r in db.conn.execute(
        "SELECT DISTINCT server_id FROM model_server_availability WHERE model_id = ? ORDER BY server_id", [model_id])]
    has_new = {r[0] for r in db.conn.execute(
        """SELECT DISTINCT a.server_id FROM model_server_availability a JOIN models n ON n.id = a.model_id
           WHERE n.civitai_version_id = ?""", [version_id])}
    chosen, skipped = [], []
    for node in nodes:
        if node == own_server_id:
            skipped.append({"server_id": node, "why": "the server's own node (MODEL_PATH) runs no agent to receive it"})
        elif node in has_new:
            skipped.append({"server_id": node, "why": "holds the new version already"})
        else:
            chosen.append(node)
    return chosen, skipped
