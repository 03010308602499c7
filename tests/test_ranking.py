"""The job checks' ranking by what the nodes report (issue #13), against the real server: the job's checkpoint loaded
first, idle before busy, today's order (most recently heard from) as the tie-break; an offline node's last state shown
as such and never used; `better_nodes` on an ok dispatch-check; a state kept in memory that follows every write."""
from __future__ import annotations

import hashlib

import pytest
from modelsync.shared.units import human_size
from support_jobs import set_last_contact
from support_server import central_server, push_files  # noqa: F401  (fixture)

CKPT, LORA = "juggernaut_xl", "detail_tweaker"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def entry(stem: str, role: str) -> dict:
    return {"path": f"/models/{role}/{stem}.safetensors", "rel_name": f"{stem}.safetensors", "role": role,
            "size": 1000, "mtime_ns": 1, "sha256": sha(stem), "type": role}


def state(loaded: str | None = None, busy: bool | None = None, sha256: bool = True, free: int = 50 * 2**30) -> dict:
    title = f"{loaded}.safetensors [{sha(loaded)[:10]}]" if loaded else None
    return {"loaded": {"title": title, "sha256": sha(loaded) if sha256 else None} if loaded else None,
            "selected": None, "modules": [], "busy": busy, "gpu": None,
            "disks": [{"root": "/models", "role": None, "free_bytes": free, "total_bytes": 100 * 2**30}],
            "floor_bytes": 2 * 2**30}


JOB = {"job": {"prompt": f"a castle <lora:{LORA}:0.7>", "override_settings": {"sd_model_checkpoint": CKPT}},
       "record": False}


@pytest.fixture
def fleet(central_server):  # noqa: F811
    """Nodes holding the job's checkpoint and LoRA, pushed in this order (so the later, the more recently heard from),
    each with its state; `lacks` holds only the LoRA."""
    server = central_server
    nodes = {
        "loaded-busy": state(CKPT, busy=True),
        "idle-other": state("another_model", busy=False),
        "loaded-idle": state(CKPT, busy=False, sha256=False),  # matched by its title: its host has not hashed it
        "unknown": None,
    }
    tokens = {}
    for node_id, reported in nodes.items():
        tokens[node_id] = push_files(server, node_id, [entry(CKPT, "checkpoint"), entry(LORA, "lora")])["token"]
        if reported is not None:
            beat(server, node_id, tokens[node_id], reported)
    tokens["lacks"] = push_files(server, "lacks", [entry(LORA, "lora")])["token"]
    return server, tokens


def beat(server, node_id: str, token: str, reported: dict) -> None:
    r = server.post(f"/api/v1/servers/{node_id}/heartbeat", json={"state": reported},
                    headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text


def node_row(page: str, node_id: str) -> str:
    """The HTML of one node's row on the dashboard's Nodes page."""
    start = page.index(f'<tr data-server-id="{node_id}">')
    return page[start:page.index("</tr>", start)]


def ranked(nodes: list[dict]) -> list[tuple[str, int, list[str]]]:
    return [(n["server_id"], n["rank"], n["reasons"]) for n in nodes]


def test_candidates_come_ranked_loaded_first_then_idle_before_busy_then_most_recent(fleet):
    server, _ = fleet
    answer = server.post("/api/v1/jobs/availability", json=JOB).json()["model_availability"]
    assert answer["available"] is True
    assert ranked(answer["candidates"]) == [
        ("loaded-idle", 1, ["checkpoint loaded", "idle"]),
        ("loaded-busy", 2, ["checkpoint loaded", "busy"]),
        ("idle-other", 3, ["idle"]),
        ("unknown", 4, []),  # no state: after the idle, before the busy among the unloaded
    ]

    check = server.post("/api/v1/servers/lacks/dispatch-check", json=JOB).json()
    assert check["ok"] is False and check["action"] == "route_elsewhere"
    assert [n["server_id"] for n in check["nodes"]] == ["loaded-idle", "loaded-busy", "idle-other", "unknown"]
    assert check["better_nodes"] == []


def test_an_ok_dispatch_check_names_the_idle_node_with_the_checkpoint_loaded_and_stays_ok(fleet):
    server, _ = fleet
    for node_id in ("loaded-busy", "idle-other", "unknown"):
        check = server.post(f"/api/v1/servers/{node_id}/dispatch-check", json=JOB).json()
        assert check["ok"] is True and check["action"] is None
        assert ranked(check["better_nodes"]) == [("loaded-idle", 1, ["checkpoint loaded", "idle"])]
    best = server.post("/api/v1/servers/loaded-idle/dispatch-check", json=JOB).json()
    assert best["ok"] is True and best["better_nodes"] == []


def test_a_state_change_reorders_at_once_and_a_job_without_a_checkpoint_ranks_by_idle(fleet):
    server, tokens = fleet
    beat(server, "loaded-idle", tokens["loaded-idle"], state(CKPT, busy=True))  # a job began there
    beat(server, "idle-other", tokens["idle-other"], state(CKPT, busy=False))  # it switched to the job's checkpoint
    answer = server.post("/api/v1/jobs/availability", json=JOB).json()["model_availability"]
    order = ranked(answer["candidates"])
    assert order[0] == ("idle-other", 1, ["checkpoint loaded", "idle"])
    assert {(n, tuple(reasons)) for n, _, reasons in order[1:3]} == {("loaded-idle", ("checkpoint loaded", "busy")),
                                                                     ("loaded-busy", ("checkpoint loaded", "busy"))}

    lora_only = {"job": {"prompt": f"<lora:{LORA}:1>"}, "record": False}
    answer = server.post("/api/v1/jobs/availability", json=lora_only).json()["model_availability"]
    order = ranked(answer["candidates"])
    assert order[0] == ("idle-other", 1, ["idle"])
    assert {n for n, _, reasons in order[-2:] if reasons == ["busy"]} == {"loaded-idle", "loaded-busy"}  # busy last
    assert all("checkpoint loaded" not in reasons for _, _, reasons in order)


def test_an_offline_nodes_last_state_is_shown_as_such_and_never_ranked(fleet):
    server, _ = fleet
    set_last_contact(server.db_path, "loaded-idle", "2000-01-01T00:00:00Z")
    listed = {s["id"]: s for s in server.get("/api/v1/servers").json()["servers"]}
    stale = listed["loaded-idle"]
    assert stale["online"] is False and stale["state"]["current"] is False
    assert stale["state"]["loaded"]["title"].startswith(CKPT) and stale["state"]["busy"] is False
    assert listed["loaded-busy"]["state"]["current"] is True and listed["unknown"]["state"] is None
    assert listed["loaded-busy"]["state"]["free_bytes_min"] == 50 * 2**30

    page = server.get("/dashboard/nodes").text
    offline_row, online_row = (node_row(page, n) for n in ("loaded-idle", "loaded-busy"))
    assert 'class="activity stale"' in offline_row and "as of" in offline_row and f"{CKPT}.safetensors" in offline_row
    assert 'class="activity"' in online_row and ">busy<" in online_row and "as of" not in online_row
    assert f">{human_size(50 * 2**30)}</span>" in online_row  # the least free of its disks

    answer = server.post("/api/v1/jobs/availability", json=JOB).json()["model_availability"]
    assert "loaded-idle" not in [n["server_id"] for n in answer["candidates"]]
    check = server.post("/api/v1/servers/idle-other/dispatch-check", json=JOB).json()
    assert check["ok"] is True and check["better_nodes"] == []  # the only idle node with it loaded is offline

    for node_id in ("loaded-busy", "idle-other", "unknown"):  # only the offline node has everything now
        set_last_contact(server.db_path, node_id, "2000-01-01T00:00:00Z")
    check = server.post("/api/v1/servers/lacks/dispatch-check", json=JOB).json()
    assert check["action"] == "retry_later" and "loaded-idle" in [n["server_id"] for n in check["nodes"]]
    assert all(n["reasons"] == [] for n in check["nodes"])  # offline: their states are not looked at


def test_the_states_in_memory_follow_a_deleted_node(fleet):
    server, _ = fleet
    r = server.delete("/api/v1/servers/loaded-idle", headers=server.admin_headers)
    assert r.status_code == 200
    answer = server.post("/api/v1/jobs/availability", json=JOB).json()["model_availability"]
    assert answer["candidates"][0]["server_id"] == "loaded-busy"
    check = server.post("/api/v1/servers/idle-other/dispatch-check", json=JOB).json()
    assert check["better_nodes"] == []


@pytest.mark.parametrize("bad, field", [
    ({"busy": "yes"}, "state.busy"),
    ({"loaded": {"title": "x", "sha256": "abc"}}, "state.loaded.sha256"),
    ({"loaded": {"sha256": None}}, "state.loaded.title"),
    ({"disks": [{"root": "/m", "free_bytes": -1, "total_bytes": 1}]}, "state.disks[0].free_bytes"),
    ({"disks": [{"root": "/m", "free_bytes": 1, "total_bytes": 1}] * 65}, "state.disks"),
    ({"gpu": {"total_bytes": True, "free_bytes": 1}}, "state.gpu.total_bytes"),
    ({"modules": "vae.safetensors"}, "state.modules"),
    ([], "state."),
])
def test_a_bad_state_is_refused_naming_its_field_and_changes_nothing(central_server, bad, field):  # noqa: F811
    token = push_files(central_server, "gpu-x", [entry(CKPT, "checkpoint")])["token"]
    r = central_server.post("/api/v1/servers/gpu-x/heartbeat", json={"state": bad},
                            headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 400 and r.json()["field"] == field, r.text
    listed = {s["id"]: s for s in central_server.get("/api/v1/servers").json()["servers"]}
    assert listed["gpu-x"]["state"] is None
