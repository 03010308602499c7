"""Civitai update checks: the rule (newer = published, out of early access, same base model, published after the held
version) on Civitai's real answers; the schedule (once a day per Civitai model, on an injected clock; failures retried,
never recorded as "no update"; a new registry model answered from the stored answer without asking); the fleet's one
rate shared with the enrichment worker; and, on the real server against the Civitai stand-in, the API
(`?update=available`, `update` in the list and the info, check now) and the one-click order onto the holders."""
from __future__ import annotations

import copy
import hashlib
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from modelsync.server import civitai_worker
from modelsync.server.civitai_updates import UpdateChecks
from modelsync.server.civitai_worker import CivitaiRate
from modelsync.server.registry import Registry
from modelsync.shared.civitai.client import CivitaiClient
from modelsync.shared.civitai.updates import HeldVersion, newer_version
from support_civitai import civitai_stub, fixture  # noqa: F401  (fixture)
from support_server import make_server, push_files, wait_for  # noqa: F401  (fixture)

MODEL_FIXTURE = "civitai_models_by_id_1231067_lora-manager.json"
VERSION_FIXTURE = "civitai_model_version_1387174_lora_flux_lora-manager.json"
CIVITAI_MODEL = 1231067
HELD = 1387174  # the real version: Flux.1 D, published 2025-02-08T11:29:04.487Z
NOW = datetime(2025, 10, 1, tzinfo=timezone.utc)
FAR_FUTURE = "2099-01-01T00:00:00.000Z"  # an early access that outlasts any real clock


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- the rule, on the real models-by-id answer ----------------------------------------------------------------------
def real_model(*extra: dict) -> dict:
    """The real `GET /api/v1/models/1231067` answer, with copies of its one version changed as given (newest first)."""
    model = fixture(MODEL_FIXTURE)
    held = model["modelVersions"][0]
    model["modelVersions"] = [{**copy.deepcopy(held), **changes} for changes in extra] + [held]
    return model


def test_the_real_answer_has_no_newer_version():
    model = fixture(MODEL_FIXTURE)
    assert [v["id"] for v in model["modelVersions"]] == [HELD]
    assert newer_version(model, HeldVersion(HELD), NOW) is None


def test_a_newer_published_version_of_the_same_base_is_the_update():
    model = real_model({"id": 2, "name": "v2.0", "publishedAt": "2025-05-01T10:00:00.000Z"})
    found = newer_version(model, HeldVersion(HELD), NOW)
    assert (found["id"], found["name"]) == (2, "v2.0")


def test_only_published_public_out_of_early_access_same_base_and_later_counts():
    model = real_model(
        {"id": 10, "publishedAt": "2025-09-01T00:00:00.000Z", "availability": "EarlyAccess"},
        {"id": 11, "publishedAt": "2025-08-01T00:00:00.000Z", "earlyAccessEndsAt": "2025-12-01T00:00:00.000Z"},
        {"id": 12, "publishedAt": "2025-07-01T00:00:00.000Z", "earlyAccessDeadline": "2025-11-01T00:00:00.000Z"},
        {"id": 13, "publishedAt": "2025-06-01T00:00:00.000Z", "baseModel": "SDXL 1.0"},
        {"id": 14, "publishedAt": "2025-05-01T00:00:00.000Z", "status": "Draft"},
        {"id": 15, "publishedAt": "2025-11-01T00:00:00.000Z"},  # scheduled: published after "now"
        {"id": 16, "publishedAt": None},
        {"id": 17, "publishedAt": "2025-04-01T00:00:00.000Z", "availability": "Private"},
        {"id": 18, "publishedAt": "2025-01-01T00:00:00.000Z"},  # older than the held version
    )
    assert newer_version(model, HeldVersion(HELD), NOW) is None
    # once the early access of 11 is over (and 15 is out), those count; 10 stays EarlyAccess on Civitai's word
    assert newer_version(model, HeldVersion(HELD), datetime(2025, 11, 15, tzinfo=timezone.utc))["id"] == 15
    assert newer_version(model, HeldVersion(HELD), datetime(2025, 10, 15, tzinfo=timezone.utc)) is None
    assert newer_version(model, HeldVersion(HELD), datetime(2025, 12, 2, tzinfo=timezone.utc))["id"] == 15
    no_15 = real_model({"id": 11, "publishedAt": "2025-08-01T00:00:00.000Z", "earlyAccessEndsAt": "2025-12-01T00:00:00.000Z"})
    assert newer_version(no_15, HeldVersion(HELD), datetime(2025, 12, 2, tzinfo=timezone.utc))["id"] == 11


def test_a_held_version_civitai_no_longer_lists_is_compared_by_what_the_registry_recorded():
    model = real_model({"id": 2, "publishedAt": "2025-05-01T00:00:00.000Z"})
    model["modelVersions"] = model["modelVersions"][:1]  # the held version was taken down
    assert newer_version(model, HeldVersion(999, "2025-03-01T00:00:00.000Z", "Flux.1 D"), NOW)["id"] == 2
    assert newer_version(model, HeldVersion(999, "2025-06-01T00:00:00.000Z", "Flux.1 D"), NOW) is None
    assert newer_version(model, HeldVersion(999, "2025-03-01T00:00:00.000Z", "SDXL 1.0"), NOW) is None
    assert newer_version(model, HeldVersion(999), NOW) is None  # nothing to compare with: no guess


# --- the fleet's one rate --------------------------------------------------------------------------------------------
def test_the_rate_spaces_every_caller_and_a_pause_stops_everyone(monkeypatch):
    rate = CivitaiRate(requests_per_minute=600, max_backoff_seconds=30)  # one request per 0.1 s
    stop = threading.Event()
    turns: list[float] = []
    clock_read = threading.local()  # each thread's last reading of the rate's clock: on a turn, the reserved moment

    class RecordingTime:
        def __getattr__(self, name: str):
            return getattr(time, name)

        def monotonic(self) -> float:
            clock_read.value = time.monotonic()
            return clock_read.value

    monkeypatch.setattr(civitai_worker, "time", RecordingTime())

    def caller() -> None:
        for _ in range(4):
            assert rate.take_turn(stop)
            turns.append(clock_read.value)  # the moment the turn was reserved, whenever this thread runs again

    threads = [threading.Thread(target=caller) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    turns.sort()
    assert len(turns) == 8
    assert all(b - a >= 0.1 - 0.005 for a, b in zip(turns, turns[1:])), turns
    paused_at = time.monotonic()
    rate.back_off(0.3)
    assert rate.take_turn(stop)
    assert time.monotonic() - paused_at >= 0.3 - 0.005


# --- the schedule, on an injected clock ------------------------------------------------------------------------------
def held_entry(stem: str, version_id: int, published_at: str = "2025-02-08T11:29:04.487Z", base: str = "Flux.1 D",
               civitai_model: int = CIVITAI_MODEL) -> dict:
    metadata = {"civitai_id": civitai_model, "civitai_version_id": version_id, "civitai_model_version_date": published_at,
                "civitai_model_base": base, "civitai_model_name": "Vivid Impressions Storybook Style"}
    return {"path": f"/models/Lora/{stem}.safetensors", "rel_name": f"{stem}.safetensors", "role": "lora", "size": 10,
            "mtime_ns": 1, "sha256": sha(stem), "type": "lora", "metadata": metadata,
            "field_sources": {k: "civitai_json" for k in metadata}}


def stand_in_model(stub, *, early_access_until: str = "2025-12-01T00:00:00.000Z") -> dict[str, dict]:
    """Civitai's model 1231067 with the held version (the real one), a newer one of the same base (v2.0), a newer one
    still in early access, one of another base and a draft."""
    versions = {
        "draft": stub.add_version(VERSION_FIXTURE, sha256=sha("draft"), version_id=5005, model_id=CIVITAI_MODEL,
                                  name="v5-draft", published_at="2025-09-20T00:00:00.000Z"),
        "xl": stub.add_version(VERSION_FIXTURE, sha256=sha("xl"), version_id=5004, model_id=CIVITAI_MODEL,
                               name="v4-xl", published_at="2025-09-10T00:00:00.000Z", base_model="SDXL 1.0"),
        "early": stub.add_version(VERSION_FIXTURE, sha256=sha("early"), version_id=5003, model_id=CIVITAI_MODEL,
                                  name="v3-early", published_at="2025-09-01T00:00:00.000Z",
                                  early_access_ends_at=early_access_until),
        "v2": stub.add_version(VERSION_FIXTURE, data=b"v2.0 " * 4000, version_id=5002, model_id=CIVITAI_MODEL,
                               name="v2.0", published_at="2025-06-01T00:00:00.000Z", file_name="storybook_v2.safetensors"),
        "held": stub.add_version(VERSION_FIXTURE, sha256=sha("held"), version_id=HELD, model_id=CIVITAI_MODEL),
    }
    versions["draft"]["status"] = "Draft"
    stub.add_model(CIVITAI_MODEL, list(versions.values()))
    return versions


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def checks(make_server, civitai_stub):  # noqa: F811
    """A real server (its own checks off) holding the old version on two nodes, and update checks on its registry
    driven step by step on a clock the test moves."""
    server = make_server(civitai_enabled=False, civitai_api_base=civitai_stub.base_url)
    server.node_tokens = {node: push_files(server, node, [held_entry("held", HELD)])["token"]
                          for node in ("gpu-01", "gpu-02")}
    registry = Registry(server.config.database_path, server.config.backups_path)
    registry.open()
    clock = Clock(NOW)
    service = UpdateChecks(registry, server.config, CivitaiRate(6000, 30), CivitaiClient(civitai_stub.base_url), clock)
    yield server, service, clock
    registry.close()


def model_id(server, stem: str) -> int:
    return server.get("/api/v1/models", params={"text": sha(stem)}).json()["models"][0]["id"]


def test_each_civitai_model_is_asked_once_a_day(checks, civitai_stub):  # noqa: F811
    server, service, clock = checks
    stand_in_model(civitai_stub)

    def asked() -> int:
        return civitai_stub.count(f"/api/v1/models/{CIVITAI_MODEL}")

    assert service.step() is True and asked() == 1  # one model held by two nodes: one request
    update = server.get(f"/api/v1/models/{model_id(server, 'held')}/info").json()["update"]
    assert update == {"version_id": 5002, "name": "v2.0", "published_at": "2025-06-01T00:00:00.000Z",
                      "download_url": f"{civitai_stub.base_url}/models/{CIVITAI_MODEL}?modelVersionId=5002"}

    assert service.step() is False and asked() == 1
    clock.now += timedelta(hours=23, minutes=59)
    assert service.step() is False and asked() == 1
    clock.now += timedelta(minutes=2)  # a day after the answer: due again
    assert service.step() is True and asked() == 2
    # the early access of v3 ended (Civitai's answer says so by its date): the next day's check finds it
    clock.now = datetime(2025, 12, 2, tzinfo=timezone.utc)
    assert service.step() is True and asked() == 3
    listing = server.get("/api/v1/models", params={"update": "available"}).json()
    assert [(m["id"], m["update"]["version_id"]) for m in listing["models"]] == [(model_id(server, "held"), 5003)]


def test_a_failed_check_is_retried_and_never_recorded_as_no_update(checks, civitai_stub):  # noqa: F811
    server, service, clock = checks
    stand_in_model(civitai_stub)
    held = model_id(server, "held")
    assert service.step()
    clock.now += timedelta(days=1, seconds=1)
    for status in (503, 429):
        civitai_stub.fail_next(status, retry_after=0, path="/api/v1/models/")
        assert service.check(CIVITAI_MODEL) == "failed"
        info = server.get(f"/api/v1/models/{held}/info").json()
        assert info["update"]["version_id"] == 5002  # the last answer stands
        assert info["update_check"]["error"].startswith("rate_limited" if status == 429 else "error")
    assert info["update_check"]["attempts"] == 2
    assert info["update_check"]["next_check_at"] >= (clock.now + timedelta(seconds=120)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert service.step() is False  # not due before its retry time
    clock.now += timedelta(seconds=121)
    assert service.step() is True
    check = server.get(f"/api/v1/models/{held}/info").json()["update_check"]
    assert (check["attempts"], check["error"]) == (0, None)


def test_a_failure_before_any_answer_leaves_no_update(checks, civitai_stub):  # noqa: F811
    server, service, _ = checks
    stand_in_model(civitai_stub)
    civitai_stub.fail_next(500, retry_after=0, path="/api/v1/models/")
    assert service.step() is True
    info = server.get(f"/api/v1/models/{model_id(server, 'held')}/info").json()
    assert info["update"] is None and info["update_check"]["checked_at"] is None and info["update_check"]["attempts"] == 1
    assert server.get("/api/v1/models", params={"update": "available"}).json()["total"] == 0


def test_a_new_model_of_a_checked_civitai_model_is_answered_from_the_stored_answer(checks, civitai_stub):  # noqa: F811
    server, service, _ = checks
    stand_in_model(civitai_stub)
    assert service.step()
    # gpu-03 gets v2.0 and an old fp8 file of the held version's era: both results come without asking Civitai again
    push_files(server, "gpu-03", [held_entry("v2", 5002, "2025-06-01T00:00:00.000Z"),
                                  held_entry("older", 1000, "2024-12-01T00:00:00.000Z")])
    assert service.step() is True and civitai_stub.count(f"/api/v1/models/{CIVITAI_MODEL}") == 1
    updates = {m["id"]: (m["update"] or {}).get("version_id") for m in server.get("/api/v1/models").json()["models"]}
    assert updates == {model_id(server, "held"): 5002, model_id(server, "v2"): None, model_id(server, "older"): 5002}


def test_a_civitai_404_means_no_versions_to_update_to(checks, civitai_stub):  # noqa: F811
    server, service, _ = checks  # the stand-in knows no model 1231067
    assert service.step() is True
    info = server.get(f"/api/v1/models/{model_id(server, 'held')}/info").json()
    assert info["update"] is None and info["update_check"]["checked_at"] is not None


# --- the real server: API, shared rate, the one-click order ---------------------------------------------------------
def test_update_api_and_the_one_click_order_onto_the_holders(make_server, civitai_stub):  # noqa: F811
    stand_in_model(civitai_stub, early_access_until=FAR_FUTURE)
    server = make_server(civitai_enabled=True, civitai_api_base=civitai_stub.base_url)
    push_files(server, "gpu-01", [held_entry("held", HELD)])
    push_files(server, "gpu-02", [held_entry("held", HELD), held_entry("other", 777, civitai_model=4242)])
    push_files(server, "gpu-03", [held_entry("other", 777, civitai_model=4242)])
    held = model_id(server, "held")

    listing = wait_for(lambda: server.get("/api/v1/models", params={"update": "available"}).json()["models"])
    assert [(m["id"], m["update"]["version_id"], m["update"]["name"]) for m in listing] == [(held, 5002, "v2.0")]
    assert server.get("/api/v1/models", params={"update": "soon"}).status_code == 400
    assert civitai_stub.count(f"/api/v1/models/{CIVITAI_MODEL}") == 1

    assert server.post(f"/api/v1/models/{held}/update").status_code == 401
    assert server.post(f"/api/v1/models/{held}/update", headers={"Authorization": "Bearer nope"}).status_code == 403
    answer = server.post(f"/api/v1/models/{held}/update", headers=server.admin_headers)
    assert answer.status_code == 201, answer.text
    ordered = answer.json()
    assert (ordered["version_id"], ordered["created"], ordered["skipped"]) == (5002, 2, [])
    v2_sha = hashlib.sha256(b"v2.0 " * 4000).hexdigest()
    assert sorted((t["server_id"], t["sha256"], t["source"]["kind"], t["source"]["civitai"]["version_id"])
                  for t in ordered["transfers"]) == [("gpu-01", v2_sha, "civitai", 5002), ("gpu-02", v2_sha, "civitai", 5002)]
    listed = server.get("/api/v1/transfers").json()["transfers"]
    assert sorted(t["server_id"] for t in listed) == ["gpu-01", "gpu-02"]  # exactly the holders of the old version

    again = server.post(f"/api/v1/models/{held}/update", headers=server.admin_headers)
    assert again.status_code == 200 and again.json()["created"] == 0
    assert sorted(t["id"] for t in again.json()["transfers"]) == sorted(t["id"] for t in ordered["transfers"])
    other = model_id(server, "other")
    assert server.post(f"/api/v1/models/{other}/update", headers=server.admin_headers).status_code == 409

    # check now: one more request, in the shared rate; a 429 pauses the whole fleet (the worker's rate says so)
    checked = server.post(f"/api/v1/models/{held}/update-check", headers=server.admin_headers).json()
    assert checked["outcome"] == "checked" and checked["update"]["version_id"] == 5002
    assert civitai_stub.count(f"/api/v1/models/{CIVITAI_MODEL}") == 2
    civitai_stub.fail_next(429, retry_after=60, path="/api/v1/models/")
    failed = server.post(f"/api/v1/models/{held}/update-check", headers=server.admin_headers).json()
    assert failed["outcome"] == "failed" and failed["update"]["version_id"] == 5002
    assert failed["update_check"]["error"].startswith("rate_limited")
    assert server.get("/api/v1/health").json()["civitai_worker"]["paused_seconds"] > 30
    paused = server.post(f"/api/v1/models/{held}/update-check", headers=server.admin_headers)
    assert paused.status_code == 503 and int(paused.headers["Retry-After"]) > 30
    assert civitai_stub.count(f"/api/v1/models/{CIVITAI_MODEL}") == 3


def test_update_checks_off(make_server, civitai_stub):  # noqa: F811
    stand_in_model(civitai_stub, early_access_until=FAR_FUTURE)
    server = make_server(civitai_enabled=True, civitai_api_base=civitai_stub.base_url, update_checks=False)
    unknown = {**held_entry("unknown", 1), "metadata": {}, "field_sources": {}}  # the worker asks Civitai about it
    push_files(server, "gpu-01", [held_entry("held", HELD), unknown])
    held = model_id(server, "held")
    answer = server.post(f"/api/v1/models/{held}/update-check", headers=server.admin_headers)
    assert answer.status_code == 409 and "off" in answer.json()["error"]
    wait_for(lambda: civitai_stub.count("/by-hash"))  # the enrichment worker runs; the update checks do not
    assert civitai_stub.count(f"/api/v1/models/{CIVITAI_MODEL}") == 0


def test_a_civitai_model_no_node_holds_any_more_never_wakes_the_checks_early(checks, civitai_stub):  # noqa: F811
    server, service, clock = checks
    stand_in_model(civitai_stub)
    assert service.step() is True  # the held model's Civitai model: due again a day later
    clock.now = NOW + timedelta(hours=12)
    push_files(server, "gpu-03", [held_entry("other", 7001, civitai_model=777)])  # another Civitai model
    assert service.step() is True and civitai_stub.count("/api/v1/models/777") == 1  # due again at NOW + 36 h
    for node in ("gpu-01", "gpu-02"):  # no node holds the first Civitai model now: its check row stays, not due
        push_files(server, node, [], token=server.node_tokens[node])
    clock.now = NOW + timedelta(hours=36) - timedelta(seconds=10)  # the first row is 12 h overdue
    assert service.step() is False and civitai_stub.count(f"/api/v1/models/{CIVITAI_MODEL}") == 1
    patient = UpdateChecks(service.registry, replace(server.config, worker_idle_seconds=3600), service.rate,
                           service.client, clock)
    assert patient.idle_seconds() == 10.0  # the real next check, not a wake-up every 50 ms for the stale row
    clock.now += timedelta(seconds=10)
    assert service.step() is True and civitai_stub.count("/api/v1/models/777") == 2
