"""Demand analytics: a synthetic hourly history in a real registry file, whose trend and forecast are worked out by
hand here (not by the code under test); and demand recorded by the real server from real pre-submission checks
(once per model named, met or unmet; `record: false` and dispatch-checks never count), batched in memory and
written at the flush and at stop."""
from __future__ import annotations

import hashlib
import sqlite3
import time
from datetime import datetime, timedelta, timezone

import pytest
from support_server import make_server, push_files, run_server  # noqa: F401  (fixture)

from modelsync.server.insight import analytics
from modelsync.server.queries import Liveness
from modelsync.server.registry import Registry

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=timezone.utc)  # the running hour: 2026-03-10T12:00Z (in no window)
HOUR = "%Y-%m-%dT%H:00:00Z"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def hour(hours_back: int) -> str:
    return (NOW - timedelta(hours=hours_back)).strftime(HOUR)


def entry(stem: str, role: str = "checkpoint", size: int = 1000) -> dict:
    return {"path": f"/models/{role}/{stem}.safetensors", "rel_name": f"{stem}.safetensors", "role": role,
            "size": size, "mtime_ns": 1, "sha256": sha(stem), "type": role}


@pytest.fixture
def registry(tmp_path):
    reg = Registry(tmp_path / "registry.db", tmp_path / "backups")
    reg.open()
    yield reg
    reg.close()


def add_model(db, stem: str, size: int = 1000) -> int:
    cur = db.conn.execute("INSERT INTO models (hash_sha256, name, filename, type, size) VALUES (?, ?, ?, 'checkpoint', ?)",
                          [sha(stem), stem, f"{stem}.safetensors", size])
    return cur.lastrowid


def add_node(db, server_id: str, online: bool) -> None:
    beat = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if online else "2000-01-01T00:00:00Z"
    db.conn.execute("INSERT INTO servers (id, last_heartbeat) VALUES (?, ?)", [server_id, beat])


def hold(db, server_id: str, model_id: int, stem: str, size: int = 1000) -> None:
    db.conn.execute("""INSERT INTO model_server_availability (server_id, model_id, path, rel_name, role, size)
                       VALUES (?, ?, ?, ?, 'checkpoint', ?)""", [server_id, model_id, f"/m/{stem}", stem, size])


def demand_row(db, hours_back: int, model_id: int | None, key: str, requests: int, unmet: int = 0,
               kind: str = "checkpoint") -> None:
    db.conn.execute("""INSERT INTO demand_hourly (hour, kind, model_key, model_id, label, requests, unmet)
                       VALUES (?, ?, ?, ?, ?, ?, ?)""", [hour(hours_back), kind, key, model_id, key, requests, unmet])


def test_trend_and_forecast_over_a_synthetic_history_match_hand_computed_values(registry):
    db = registry.db()
    a, b = add_model(db, "alpha"), add_model(db, "beta")
    add_node(db, "n1", online=True)
    add_node(db, "n2", online=False)
    hold(db, "n1", a, "alpha")
    hold(db, "n2", a, "alpha")
    # alpha, this 24 h window (hours 24..1 back: it ends with the last complete hour): 10 three hours back, 20 in
    # the last complete hour, 3 of them unmet
    demand_row(db, 3, a, f"sha256:{sha('alpha')}", 10, unmet=1)
    demand_row(db, 1, a, f"sha256:{sha('alpha')}", 20, unmet=2)
    # alpha, the previous window (hours 48..25 back): 20
    demand_row(db, 36, a, f"sha256:{sha('alpha')}", 20)
    # outside both windows (the running hour, before the previous window, in the future): not counted
    demand_row(db, 0, a, f"sha256:{sha('alpha')}", 1000)
    demand_row(db, 49, a, f"sha256:{sha('alpha')}", 1000)
    demand_row(db, -1, a, f"sha256:{sha('alpha')}", 1000)
    # beta: 5 in the window's first hour only; nothing before
    demand_row(db, 24, b, f"sha256:{sha('beta')}", 5, unmet=5)
    # a name no node knows
    demand_row(db, 2, None, "name:ghost", 2, unmet=2, kind="lora")

    answer = analytics.demand(db, Liveness(300, "central"), NOW, "24h")
    by_key = {m["key"]: m for m in answer["models"]}
    alpha, beta, ghost = by_key[f"sha256:{sha('alpha')}"], by_key[f"sha256:{sha('beta')}"], by_key["name:ghost"]

    assert (alpha["requests"], alpha["unmet"], alpha["previous_requests"]) == (30, 3, 20)
    assert alpha["trend"] == pytest.approx(0.5)  # (30 - 20) / 20
    # smoothing, alpha 0.3, oldest first: 21 zero hours keep the level at 0; then 10 -> 3.0; 0 -> 2.1; 20 -> 6 + 1.47
    assert alpha["forecast"] == pytest.approx(7.47 * 24)
    assert alpha["holders"] == {"online": 1, "all": 2, "nodes": ["n1", "n2"]}
    assert alpha["model"]["name"] == "alpha"

    assert (beta["requests"], beta["unmet"], beta["previous_requests"]) == (5, 5, 0)
    assert beta["trend"] is None  # nothing the window before: no ratio
    assert beta["forecast"] == pytest.approx(5 * 0.7 ** 23 * 24)  # s0 = 5, then 23 hours of 0
    assert beta["holders"] == {"online": 0, "all": 0, "nodes": []}

    assert (ghost["kind"], ghost["requests"], ghost["holders"], ghost["model"]) == ("lora", 2, None, None)
    assert [m["key"] for m in answer["models"]] == [alpha["key"], beta["key"], "name:ghost"]  # most requested first
    assert (answer["requests"], answer["unmet"], answer["total_models"]) == (37, 10, 3)
    series = {p["hour"]: p["requests"] for p in answer["series"]}
    assert len(series) == 24 and series[hour(1)] == 20 and series[hour(3)] == 10 and series[hour(24)] == 5
    assert series[hour(2)] == 2 and sum(series.values()) == 37 and hour(0) not in series

    only_loras = analytics.demand(db, Liveness(300, "central"), NOW, "24h", kind="lora")
    assert [m["key"] for m in only_loras["models"]] == ["name:ghost"]

    one = analytics.demand_series(db, Liveness(300, "central"), NOW, "24h", a)
    assert (one["requests"], one["previous_requests"], one["trend"]) == (30, 20, pytest.approx(0.5))
    assert one["forecast"] == pytest.approx(7.47 * 24)
    assert [p["requests"] for p in one["series"]] == [0] * 21 + [10, 0, 20]

    week = analytics.demand(db, Liveness(300, "central"), NOW, "7d")
    alpha_week = {m["key"]: m for m in week["models"]}[alpha["key"]]
    assert (alpha_week["requests"], alpha_week["previous_requests"], alpha_week["trend"]) == (30 + 20 + 1000, 0, None)
    assert len(week["series"]) == 168 and week["to"] == hour(1)


def test_a_steady_demand_forecasts_itself_and_has_no_trend_early_in_an_hour(registry):
    """10 requests every hour; one minute into the running hour (2 requests so far): the running hour is in no
    window, so the 24 h forecast is 10 x 24 = 240 (it was 168 when the partial hour counted as a full one)."""
    db = registry.db()
    steady = add_model(db, "steady")
    key = f"sha256:{sha('steady')}"
    now = NOW.replace(minute=1)
    for back in range(1, 24 * 30 * 2 + 1):
        demand_row(db, back, steady, key, 10)
    demand_row(db, 0, steady, key, 2)
    for window, hours in (("24h", 24), ("7d", 168), ("30d", 720)):
        one = analytics.demand_series(db, Liveness(300, "central"), now, window, steady)
        assert (one["requests"], one["previous_requests"]) == (10 * hours, 10 * hours), window
        assert one["trend"] == 0.0 and one["forecast"] == pytest.approx(10 * hours), window
    # the sums recommendations and the fleet risks weigh take as many buckets as the window has hours
    assert analytics.demand_by_model(db, now, "7d")[steady] == (10 * 168, 0)
    assert analytics.demand_by_model(db, now, "30d")[steady] == (10 * 720, 0)


def test_cold_models_only_after_thirty_days_of_recording(registry):
    db = registry.db()
    used, idle = add_model(db, "used"), add_model(db, "idle", size=700)
    add_node(db, "n1", online=True)
    add_node(db, "n2", online=True)
    hold(db, "n1", used, "used")
    hold(db, "n1", idle, "idle", size=700)
    hold(db, "n2", idle, "idle", size=700)
    demand_row(db, 24 * 10, used, f"sha256:{sha('used')}", 3)  # asked for 10 days ago
    db.conn.execute("UPDATE demand_recording SET started_at = ?", [(NOW - timedelta(days=29)).strftime("%Y-%m-%dT%H:%M:%SZ")])
    early = analytics.fleet(db, Liveness(300, "central"), NOW)
    assert early["cold"]["known"] is False and early["cold"]["models"] == []
    assert early["cold"]["from"] == (NOW + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

    db.conn.execute("UPDATE demand_recording SET started_at = ?", [(NOW - timedelta(days=31)).strftime("%Y-%m-%dT%H:%M:%SZ")])
    later = analytics.fleet(db, Liveness(300, "central"), NOW)
    assert later["cold"]["known"] is True
    assert [c["model"]["name"] for c in later["cold"]["models"]] == ["idle"]
    assert later["cold"]["nodes"] == [{"server_id": "n1", "bytes": 700}, {"server_id": "n2", "bytes": 700}]
    assert [s["model"]["name"] for s in later["single_holder"]] == ["used"]  # idle has two holders

    db.conn.execute("UPDATE models SET last_used = ? WHERE id = ?", [(NOW - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ"), idle])
    assert analytics.fleet(db, Liveness(300, "central"), NOW)["cold"]["models"] == []  # a dispatch used it


CHECKPOINT_JOB = {"job": [{"type": "checkpoint", "name": "alpha"}, {"type": "lora", "name": "nowhere"}],
                  "format": "requirements"}


def age_demand(server) -> str:
    """Time passes: the counts the server took (written by the flush before an analytics read) move to the last
    complete hour, the newest hour any window holds; that hour."""
    assert server.get("/api/v1/analytics/fleet", headers=server.admin_headers).status_code == 200  # flushes
    last = (datetime.now(timezone.utc) - timedelta(hours=1)).strftime(HOUR)
    with sqlite3.connect(server.db_path) as conn:
        rows = conn.execute("""SELECT kind, model_key, MAX(model_id), MAX(label), SUM(requests), SUM(unmet)
                               FROM demand_hourly GROUP BY kind, model_key""").fetchall()
        conn.execute("DELETE FROM demand_hourly")
        conn.executemany("""INSERT INTO demand_hourly (hour, kind, model_key, model_id, label, requests, unmet)
                            VALUES (?, ?, ?, ?, ?, ?, ?)""", [(last, *row) for row in rows])
    return last


def clear_of_the_hour_turn(margin_seconds: float = 60.0) -> None:
    """Demand is counted in UTC hours: close to the next hour, wait until just past it, so that what a test records
    next falls in one hour and that hour is still running when the test reads it."""
    now = datetime.now(timezone.utc)
    next_hour = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    if (next_hour - now).total_seconds() < margin_seconds:
        while datetime.now(timezone.utc) < next_hour:
            time.sleep(0.05)


def availability(server, body: dict) -> dict:
    answer = server.post("/api/v1/jobs/availability", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_the_server_counts_each_named_model_once_per_pre_submission_check(make_server):
    server = make_server()
    push_files(server, "gpu-01", [entry("alpha")])
    clear_of_the_hour_turn()
    for _ in range(3):
        availability(server, CHECKPOINT_JOB)
    availability(server, {**CHECKPOINT_JOB, "record": False})  # a look only
    dispatched = server.post("/api/v1/servers/gpu-01/dispatch-check", json=CHECKPOINT_JOB)
    assert dispatched.status_code == 200  # a dispatch-check of the same job does not count again
    twice = {"job": [{"type": "checkpoint", "name": "alpha"}, {"type": "checkpoint", "sha256": sha("alpha")}],
             "format": "requirements"}
    availability(server, twice)  # names alpha twice: counts once
    running = server.get("/api/v1/analytics/demand", params={"window": "24h"}).json()
    assert running["requests"] == 0  # the running hour is in no window yet
    last = age_demand(server)

    answer = server.get("/api/v1/analytics/demand", params={"window": "24h"})
    assert answer.status_code == 200, answer.text
    by_key = {m["key"]: m for m in answer.json()["models"]}
    alpha = by_key[f"sha256:{sha('alpha')}"]
    assert (alpha["requests"], alpha["unmet"], alpha["holders"]["online"]) == (4, 0, 1)
    nowhere = by_key["name:nowhere"]
    assert (nowhere["kind"], nowhere["requests"], nowhere["unmet"], nowhere["label"]) == ("lora", 3, 3, "nowhere")

    series = server.get("/api/v1/analytics/demand", params={"model_id": alpha["model"]["id"], "window": "7d"}).json()
    assert series["requests"] == 4 and len(series["series"]) == 7 * 24
    # the newest complete hour when the counts were aged (the hour may have turned since: `to` is then one later)
    assert [s["requests"] for s in series["series"] if s["hour"] == last] == [4]

    fleet = server.get("/api/v1/analytics/fleet").json()
    assert [u["key"] for u in fleet["unmet"]] == ["name:nowhere"]
    assert fleet["cold"]["known"] is False  # demand recorded for minutes, not 30 days

    for bad in ({"window": "1y"}, {"kind": "spaceship"}, {"model_id": "0"}, {"limit": "9999"}):
        refused = server.get("/api/v1/analytics/demand", params=bad)
        assert refused.status_code == 400, (bad, refused.text)
    assert server.get("/api/v1/analytics/demand", params={"model_id": "999999"}).status_code == 404


def test_counts_taken_in_memory_are_written_at_stop(tmp_path):
    with run_server(tmp_path / "data", demand_flush_seconds=3600) as server:  # no timed flush meanwhile
        push_files(server, "gpu-01", [entry("alpha")])
        clear_of_the_hour_turn()  # both checks in one hour
        availability(server, CHECKPOINT_JOB)
        availability(server, CHECKPOINT_JOB)
        with sqlite3.connect(server.db_path) as conn:
            assert conn.execute("SELECT COUNT(*) FROM demand_hourly").fetchone()[0] == 0  # still in memory
    with sqlite3.connect(server.db_path) as conn:
        rows = conn.execute("SELECT model_key, requests, unmet FROM demand_hourly ORDER BY model_key").fetchall()
    assert rows == [("name:nowhere", 2, 2), (f"sha256:{sha('alpha')}", 2, 0)]


def test_the_flush_writes_in_one_batch_and_a_failed_write_keeps_the_counts(registry):
    from modelsync.server.insight.demand import DemandRecorder
    from modelsync.shared.jobs.requirements import extract
    from modelsync.shared.jobs.resolver import known_embeddings, resolve

    db = registry.db()
    add_model(db, "alpha")
    add_node(db, "n1", online=True)
    recorder = DemandRecorder(registry, clock=lambda: NOW)
    job = [{"type": "checkpoint", "sha256": sha("alpha")}, {"type": "lora", "name": "nowhere"}]  # alpha: no copy
    parsed = extract(job, "requirements", known_embeddings(db))
    resolutions = resolve(db, parsed.requirements)
    recorder.record(resolutions, {"servers": [{"server_id": "n1", "online": True}]})
    recorder.record(resolutions, {"servers": []})
    db.conn.execute("DROP TABLE demand_hourly")  # the write fails: the counts stay for the next try
    assert recorder.flush() == 0
    db.conn.execute("""CREATE TABLE demand_hourly (hour TEXT NOT NULL, kind TEXT NOT NULL, model_key TEXT NOT NULL,
                       model_id INTEGER, label TEXT, requests INTEGER NOT NULL, unmet INTEGER NOT NULL,
                       PRIMARY KEY (hour, kind, model_key))""")
    assert recorder.flush() == 2
    rows = db.conn.execute("SELECT hour, kind, model_key, requests, unmet FROM demand_hourly ORDER BY kind").fetchall()
    assert rows == [(hour(0), "checkpoint", f"sha256:{sha('alpha')}", 2, 2), (hour(0), "lora", "name:nowhere", 2, 2)]
