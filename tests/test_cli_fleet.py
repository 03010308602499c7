"""The command line's face of the fleet (issues #12, #13), as an operator meets it: the real `modelsync` command against
the real central server on loopback, with nodes registered by `modelsync scan --push` of real model files. Each verb's
table and --json (the server's answer as is); transfers ordered, cancelled and retried, a URL's query never printed;
webhooks added (the secret printed once), listed without it, tested against a receiver that verifies the signature;
the admin and queue tokens' one-line errors."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import model_factory
import pytest
from support_civitai import civitai_stub  # noqa: F401  (fixture)
from support_server import RunningServer, make_server, wait_for  # noqa: F401  (fixture)
from support_webhooks import webhook_receiver
from test_cli_commands import one_line_error, run
from test_demand_analytics import age_demand

QUERY_SECRET = "tok3n-in-the-query"
GIB = 1024**3


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Fleet:
    server: RunningServer
    tmp: Path
    hero: str  # the SHA256 of the LoRA only gpu-01 holds
    base: str  # the checkpoint both hold
    tokens: dict[str, str]

    @property
    def url(self) -> tuple[str, str]:
        return ("--server", self.server.base_url)

    @property
    def admin(self) -> dict[str, str]:
        return {"MODELSYNC_ADMIN_TOKEN": self.server.admin_token}

    def cli(self, *args: str, env: dict | None = None, stdin: str | None = None):
        return run(*args, cwd=self.tmp, env=env, stdin=stdin)

    def ok(self, *args: str, env: dict | None = None) -> str:
        out = self.cli(*args, env=env)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def json(self, *args: str, env: dict | None = None) -> dict:
        return json.loads(self.ok(*args, "--json", env=env))

    def heartbeat(self, node: str, state: dict) -> None:
        answer = self.server.post(f"/api/v1/servers/{node}/heartbeat", json={"state": state, "files_url": f"http://127.0.0.1:9/{node}"},
                                  headers={"Authorization": f"Bearer {self.tokens[node]}"})
        assert answer.status_code == 200, answer.text


def register(server: RunningServer, tmp: Path, node: str, root: Path) -> str:
    """`modelsync scan --push` registers the node (loopback) and stores its token: returned."""
    data = tmp / f"data-{node}"
    out = run("scan", str(root), "--hash", "--server-id", node, "--data", str(data), "--push", server.base_url, cwd=tmp)
    assert out.returncode == 0, out.stderr
    return json.loads((data / "node_tokens.json").read_text())[node]


def disks(root: Path, free: int) -> list[dict]:
    return [{"root": str(root / "Stable-diffusion"), "role": "checkpoint", "free_bytes": free, "total_bytes": 100 * GIB},
            {"root": str(root / "Lora"), "role": "lora", "free_bytes": free, "total_bytes": 100 * GIB}]


def make_fleet(server: RunningServer, tmp: Path) -> Fleet:
    one, two = tmp / "gpu-01" / "models", tmp / "gpu-02" / "models"
    base = model_factory.write_checkpoint(one / "Stable-diffusion" / "base.safetensors", base="sdxl")
    hero = model_factory.write_lora(one / "Lora" / "hero.safetensors", base="sdxl", metadata={"ss_output_name": "hero_v1"})
    (two / "Stable-diffusion").mkdir(parents=True)
    shutil.copyfile(base, two / "Stable-diffusion" / "base.safetensors")
    model_factory.write_lora(two / "Lora" / "ink.safetensors", base="sd1")
    tokens = {node: register(server, tmp, node, root) for node, root in (("gpu-01", one), ("gpu-02", two))}
    fleet = Fleet(server, tmp, sha256_of(hero), sha256_of(base), tokens)
    fleet.heartbeat("gpu-01", {"loaded": {"title": "base.safetensors [abc]", "sha256": fleet.base}, "busy": False,
                               "disks": disks(one, 40 * GIB), "floor_bytes": 2 * GIB})
    fleet.heartbeat("gpu-02", {"loaded": None, "busy": True, "disks": disks(two, 30 * GIB), "floor_bytes": 2 * GIB})
    return fleet


@pytest.fixture
def fleet(make_server, tmp_path) -> Fleet:
    return make_fleet(make_server(), tmp_path)


def table(stdout: str) -> list[dict[str, str]]:
    """The first table printed: its rows by column (cells split on runs of 2+ spaces, as print_table aligns them),
    up to a blank line or a note."""
    lines = stdout.strip("\n").splitlines()
    header = re.split(r"\s{2,}", lines[0].strip())
    rows = []
    for line in lines[1:]:
        if not line.strip() or line.startswith((" ", "(")):
            break
        rows.append(dict(zip(header, re.split(r"\s{2,}", line.strip()))))
    return rows


def test_fleet_nodes_shows_what_each_node_is_doing(fleet):
    rows = {r["id"]: r for r in table(fleet.ok("fleet", "nodes", *fleet.url))}
    assert (rows["gpu-01"]["loaded"], rows["gpu-01"]["activity"], rows["gpu-01"]["free_disk"]) == (
        "base.safetensors [abc]", "idle", "40.0 GB")
    assert (rows["gpu-02"]["loaded"], rows["gpu-02"]["activity"], rows["gpu-02"]["free_disk"]) == ("-", "busy", "30.0 GB")
    assert rows["gpu-01"]["state_of"] == "now" and rows["gpu-01"]["models"] == "2"
    answer = fleet.json("fleet", "nodes", *fleet.url)
    assert answer == fleet.server.get("/api/v1/servers").json()  # the server's answer, as is


def test_transfers_ordered_by_url_peer_and_model_never_print_a_query(fleet):
    url = f"http://127.0.0.1:9/files/new.safetensors?token={QUERY_SECRET}"
    sha = "ab" * 32
    ordered = fleet.cli("transfer", "order", "gpu-02", "--url", url, "--sha256", sha, "--role", "lora", *fleet.url, "-v",
                        env=fleet.admin)
    assert ordered.returncode == 0, ordered.stderr
    assert QUERY_SECRET not in ordered.stdout + ordered.stderr
    row = table(ordered.stdout)[0]
    assert (row["node"], row["state"], row["source"]) == ("gpu-02", "queued", "url: http://127.0.0.1:9/files/new.safetensors")
    url_transfer = int(row["id"])

    peer = fleet.json("transfer", "order", "gpu-02", "--model", fleet.hero, "--from", "gpu-01", *fleet.url, env=fleet.admin)
    assert (peer["server_id"], peer["sha256"], peer["source"]["kind"], peer["source"]["server_id"]) == (
        "gpu-02", fleet.hero, "peer", "gpu-01")

    listed = fleet.cli("fleet", "transfers", "--node", "gpu-02", *fleet.url)
    assert listed.returncode == 0 and QUERY_SECRET not in listed.stdout
    rows = {int(r["id"]): r for r in table(listed.stdout)}
    assert set(rows) == {url_transfer, peer["id"]} and rows[peer["id"]]["source"] == "peer: gpu-01"
    assert rows[peer["id"]]["model"] == fleet.hero[:12]
    as_json = fleet.cli("fleet", "transfers", "--node", "gpu-02", *fleet.url, "--json")
    assert QUERY_SECRET not in as_json.stdout
    assert json.loads(as_json.stdout) == fleet.server.get("/api/v1/transfers", params={"server_id": "gpu-02", "limit": 100}).json()
    assert fleet.json("fleet", "transfers", "--node", "gpu-01", *fleet.url)["transfers"] == []

    cancelled = table(fleet.ok("transfer", "cancel", str(url_transfer), *fleet.url, env=fleet.admin))[0]
    assert cancelled["state"] == "cancelled"
    assert [t["id"] for t in fleet.json("fleet", "transfers", "--state", "cancelled", *fleet.url)["transfers"]] == [url_transfer]
    retried = fleet.json("transfer", "retry", str(url_transfer), *fleet.url, env=fleet.admin)
    assert retried["state"] == "queued" and QUERY_SECRET not in json.dumps(retried)
    assert retried["source"]["url"] == "http://127.0.0.1:9/files/new.safetensors"


@pytest.mark.parametrize("args, env, code, expected", [
    (("transfer", "order", "gpu-02", "--model", "{hero}"), {}, 2,
     "modelsync transfer order: ordering a transfer needs the admin token: --admin-token, or MODELSYNC_ADMIN_TOKEN"),
    (("transfer", "order", "gpu-02", "--model", "{hero}", "--admin-token", "wrong-" * 5), {}, 1, "HTTP 403"),
    (("transfer", "cancel", "1"), {"MODELSYNC_ADMIN_TOKEN": "wrong-" * 5}, 1, "(give the admin token: --admin-token"),
    (("webhook", "list"), {}, 2, "listing webhooks needs the admin token"),
    (("webhook", "list", "--admin-token", "wrong-" * 5), {}, 1, "HTTP 403"),
    (("transfer", "cancel", "987654"), "admin", 1, "HTTP 404"),
    (("webhook", "remove", "987654"), "admin", 1, "HTTP 404: no webhook 987654"),
    (("transfer", "order", "gpu-02", "--url", "ftp://host/x.safetensors", "--sha256", "ab" * 32, "--role", "lora"), "admin",
     1, "HTTP 400: "),
    (("transfer", "order", "gpu-02", "--model", "{hero}", "--source", "civitai"), "admin", 1, "HTTP 409: "),
    (("transfer", "order", "gpu-02", "--url", "http://host/x.safetensors"), "admin", 2, "needs the file's --sha256"),
    (("webhook", "add", "http://127.0.0.1:9/hook", "--events", "node.sleepy"), "admin", 1, "HTTP 400: unknown event 'node.sleepy'"),
    (("fleet", "recommendations", "nobody"), {}, 1, "HTTP 404"),
])
def test_refusals_are_one_line_naming_the_token_or_the_servers_reason(fleet, args, env, code, expected):
    out = fleet.cli(*(a.format(hero=fleet.hero) for a in args), *fleet.url, env=fleet.admin if env == "admin" else env)
    assert out.returncode == code, (out.returncode, out.stderr)
    line = one_line_error(out)
    assert expected in line, line
    assert fleet.server.admin_token not in line


def test_a_server_that_is_down_is_one_line(tmp_path):
    out = run("fleet", "risks", "--server", "http://127.0.0.1:9", cwd=tmp_path)
    assert "nothing listens at http://127.0.0.1:9/" in one_line_error(out) and out.returncode == 1
    out = run("webhook", "list", "--server", "http://127.0.0.1:9", "--admin-token", "a" * 32, cwd=tmp_path)
    assert "nothing listens at" in one_line_error(out)


def test_webhooks_added_with_the_secret_once_listed_without_it_tested_and_removed(fleet):
    with webhook_receiver() as receiver:
        hook_url = f"{receiver.url}?key={QUERY_SECRET}"
        added = fleet.cli("webhook", "add", hook_url, "--events", "node.offline,transfer.failed", "--description", "ops",
                          *fleet.url, env=fleet.admin)
        assert added.returncode == 0, added.stderr
        secret = next(line.split(": ", 1)[1] for line in added.stdout.splitlines() if line.startswith("secret: "))
        assert secret.startswith("whsec_") and "shown this once" in added.stderr
        assert QUERY_SECRET not in added.stdout
        row = table(added.stdout)[0]
        assert (row["url"], row["events"], row["description"]) == (receiver.url, "node.offline,transfer.failed", "ops")
        hook = row["id"]
        receiver.secret = secret

        listed = fleet.cli("webhook", "list", *fleet.url, env=fleet.admin)
        assert secret not in listed.stdout and QUERY_SECRET not in listed.stdout
        assert [(r["id"], r["url"], r["enabled"]) for r in table(listed.stdout)] == [(hook, receiver.url, "yes")]
        as_json = fleet.json("webhook", "list", *fleet.url, env=fleet.admin)
        assert "secret" not in as_json["webhooks"][0] and secret not in json.dumps(as_json)
        assert as_json == fleet.server.get("/api/v1/webhooks", headers=fleet.server.admin_headers).json()

        tested = fleet.cli("webhook", "test", hook, *fleet.url, env=fleet.admin)
        assert tested.returncode == 0, tested.stderr
        assert table(tested.stdout)[0]["state"] == "delivered" and table(tested.stdout)[0]["last_status"] == "204"
        assert [r.type for r in receiver.delivered()] == ["webhook.test"] and not receiver.unverified

        log = fleet.ok("webhook", "deliveries", hook, *fleet.url, env=fleet.admin)
        assert log.splitlines()[0].startswith(f"webhook {hook} {receiver.url}: enabled")
        delivery = table("\n".join(log.splitlines()[1:]))[0]
        assert (delivery["event_type"], delivery["state"]) == ("webhook.test", "delivered")
        retried = fleet.json("webhook", "retry", hook, delivery["id"], *fleet.url, env=fleet.admin)
        assert retried["id"] == int(delivery["id"]) and retried["state"] == "pending"
        again = receiver.wait_for(lambda r: r.type == "webhook.test" and len(receiver.delivered()) == 2)
        assert again.webhook_id == receiver.delivered()[0].webhook_id  # the same message, sent again

        receiver.script = [500]
        failing = fleet.cli("webhook", "test", hook, *fleet.url, env=fleet.admin)
        assert failing.returncode == 1 and table(failing.stdout)[0]["state"] == "failed"

        assert fleet.ok("webhook", "remove", hook, *fleet.url, env=fleet.admin).strip() == f"webhook {hook} removed"
        assert fleet.ok("webhook", "list", *fleet.url, env=fleet.admin).strip() == "no webhooks"


def test_demand_risks_and_recommendations(fleet):
    job = "a cat <lora:hero_v1:0.8> <lora:nowhere:1>\nSteps: 20, Sampler: Euler, Model: base"
    for _ in range(3):
        fleet.cli("job", "check", "-", "--record", *fleet.url, stdin=job)
    age_demand(fleet.server)  # time passes: the counts move into the last complete hour

    demand = fleet.ok("fleet", "demand", "--window", "24h", *fleet.url)
    assert demand.splitlines()[0].startswith("24h (")
    rows = {r["model"]: r for r in table("\n".join(demand.splitlines()[1:]))}
    assert (rows["hero_v1"]["kind"], rows["hero_v1"]["requests"], rows["hero_v1"]["unmet"], rows["hero_v1"]["holders"]) == (
        "lora", "3", "0", "1/1")
    assert rows["<lora:nowhere:1>"]["unmet"] == "3" and rows["<lora:nowhere:1>"]["holders"] == "-"
    answer = fleet.json("fleet", "demand", "--window", "24h", "--kind", "lora", *fleet.url)
    assert answer == fleet.server.get("/api/v1/analytics/demand", params={"window": "24h", "kind": "lora", "limit": 100}).json()
    assert {m["label"] or m["model"]["name"] for m in answer["models"]} >= {"<lora:nowhere:1>"}

    risks = fleet.ok("fleet", "risks", *fleet.url)
    single = table(risks.split("\n\n")[0].split("\n", 1)[1])
    assert {(r["model"], r["server_id"]) for r in single} >= {("hero_v1", "gpu-01")}
    assert "demanded models no online node holds (1):" in risks and "<lora:nowhere:1>" in risks
    assert "cold models: not known until demand has been recorded for 30 days" in risks
    free = {r["server_id"]: r for r in table(risks.split("free disk:\n")[1])}
    assert (free["gpu-01"]["free"], free["gpu-02"]["free"], free["gpu-02"]["floor"]) == ("40.0 GB", "30.0 GB", "2.0 GB")
    assert fleet.json("fleet", "risks", *fleet.url) == fleet.server.get("/api/v1/analytics/fleet").json()

    recommended = fleet.ok("fleet", "recommendations", "gpu-02", *fleet.url)
    assert recommended.startswith("gpu-02 (online; free 30.0 GB, floor 2.0 GB)")
    place = table(recommended.split("place:\n")[1])
    assert [(r["model"], r["requests"], r["source"]) for r in place] == [("hero_v1", "3", "peer: gpu-01")]
    answer = fleet.json("fleet", "recommendations", "gpu-02", *fleet.url)
    assert answer == fleet.server.get("/api/v1/servers/gpu-02/recommendations").json()
    assert [p["model"]["sha256"] for p in answer["place"]] == [fleet.hero]


def test_the_queue_token_is_named_and_a_node_reads_its_own_recommendations(make_server, tmp_path):
    fleet = make_fleet(make_server(queue_token="q" * 32), tmp_path)
    for verb in (("demand",), ("risks",), ("recommendations", "gpu-02")):
        line = one_line_error(fleet.cli("fleet", *verb, *fleet.url))
        assert "HTTP 401" in line and "give the queue token (or the admin token): --token, or MODELSYNC_QUEUE_TOKEN" in line
    assert "or node gpu-02's own token" in one_line_error(fleet.cli("fleet", "recommendations", "gpu-02", *fleet.url,
                                                                    "--token", fleet.tokens["gpu-01"]))
    own = fleet.json("fleet", "recommendations", "gpu-02", *fleet.url, "--token", fleet.tokens["gpu-02"])
    assert own["server_id"] == "gpu-02"
    # a token of an earlier release may start with "-": argparse takes it for an option; the error says what to do
    dash = one_line_error(fleet.cli("fleet", "recommendations", "gpu-02", *fleet.url, "--token", "-" + "x" * 42))
    assert "--token: expected one argument" in dash and "--option=VALUE" in dash
    joined = fleet.json("fleet", "recommendations", "gpu-02", *fleet.url, f"--token={fleet.tokens['gpu-02']}")
    assert joined["server_id"] == "gpu-02"
    assert fleet.json("fleet", "risks", *fleet.url, env={"MODELSYNC_QUEUE_TOKEN": "q" * 32})["nodes"]


def test_fleet_updates_lists_models_with_a_newer_civitai_version(make_server, civitai_stub, tmp_path):  # noqa: F811
    from test_civitai_updates import CIVITAI_MODEL, HELD, VERSION_FIXTURE

    root = tmp_path / "models"
    held = model_factory.write_lora(root / "Lora" / "storybook.safetensors", base="flux1")
    civitai_stub.add_model(CIVITAI_MODEL, [
        civitai_stub.add_version(VERSION_FIXTURE, data=b"v2.0 " * 4000, version_id=5002, model_id=CIVITAI_MODEL,
                                 name="v2.0", published_at="2025-06-01T00:00:00.000Z"),
        civitai_stub.add_version(VERSION_FIXTURE, sha256=sha256_of(held), version_id=HELD, model_id=CIVITAI_MODEL)])
    server = make_server(civitai_enabled=True, civitai_api_base=civitai_stub.base_url)
    register(server, tmp_path, "gpu-01", root)
    server_answer = wait_for(lambda: server.get("/api/v1/models", params={"update": "available", "limit": 100}).json()["models"]
                             and server.get("/api/v1/models", params={"update": "available", "limit": 100}).json())
    updates = run("fleet", "updates", "--server", server.base_url, cwd=tmp_path)
    assert updates.returncode == 0, updates.stderr
    [row] = table(updates.stdout)
    assert (row["new_version"], row["version_id"], row["nodes"]) == ("v2.0", "5002", "1/1")
    assert row["page"] == f"{civitai_stub.base_url}/models/{CIVITAI_MODEL}?modelVersionId=5002"
    as_json = json.loads(run("fleet", "updates", "--server", server.base_url, "--json", cwd=tmp_path).stdout)
    assert as_json == server_answer
