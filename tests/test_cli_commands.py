"""The command line as an operator meets it: every verb, the per-user data folder, tokens, one-line errors."""
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import model_factory
import pytest
from support_server import central_server, make_server  # noqa: F401  (fixtures)

MODELSYNC = shutil.which("modelsync") or ""


def run(*args: str, cwd: Path, env: dict | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    command = [MODELSYNC] if MODELSYNC else [sys.executable, "-m", "modelsync.cli.main"]
    environment = {k: v for k, v in os.environ.items() if k not in ("CONFIG_DATA_PATH", "MODELSYNC_SERVER")}
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, env={**environment, **(env or {})},
                          timeout=120, input=stdin)


def one_line_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    return lines[0]


@pytest.fixture
def models(tmp_path) -> Path:
    root = tmp_path / "webui" / "models"
    model_factory.write_checkpoint(root / "Stable-diffusion" / "base.safetensors", base="sdxl")
    hero = model_factory.write_lora(root / "Lora" / "hero.safetensors", base="sdxl", metadata={"ss_output_name": "hero_v1"})
    (root / "Lora" / "copies").mkdir()
    shutil.copyfile(hero, root / "Lora" / "copies" / "hero-again.safetensors")
    model_factory.write_lora(root / "Lora" / "ink.safetensors", base="sd1")
    (root / "Lora" / "cut.safetensors").write_bytes(hero.read_bytes()[:-100])
    return root


def test_scan_json_lists_every_file_and_models_lists_and_filters_the_catalog(tmp_path, models):
    data = ["--data", str(tmp_path / "node")]
    scanned = run("scan", str(models), "--hash", "--json", "--server-id", "gpu-01", *data, cwd=tmp_path)
    assert scanned.returncode == 0, scanned.stderr
    files = {Path(f["path"]).name: f for f in json.loads(scanned.stdout)["files"]}
    hero_sha = hashlib.sha256((models / "Lora" / "hero.safetensors").read_bytes()).hexdigest()
    assert files["hero.safetensors"]["sha256"] == hero_sha and files["hero.safetensors"]["autov2"] == hero_sha[:10]
    assert (files["hero.safetensors"]["role"], files["hero.safetensors"]["type"], files["hero.safetensors"]["base"]) == ("lora", "lora", "sdxl")
    assert files["cut.safetensors"]["state"] == "broken" and "truncated" in files["cut.safetensors"]["problem"]

    def listed(*flags: str) -> set[str]:
        out = run("models", "--json", "--server-id", "gpu-01", *data, *flags, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        return {r["rel_name"] for r in json.loads(out.stdout)}

    assert listed() == {"base.safetensors", "hero.safetensors", "copies/hero-again.safetensors", "ink.safetensors", "cut.safetensors"}
    assert listed("--type", "lora", "--base", "sdxl") == {"hero.safetensors", "copies/hero-again.safetensors"}
    assert listed("--role", "checkpoint") == {"base.safetensors"}
    assert listed("--duplicates") == {"hero.safetensors", "copies/hero-again.safetensors"}
    assert listed("--problems") == {"cut.safetensors"}
    assert listed("--text", "INK") == {"ink.safetensors"}
    assert listed("--unhashed") == set()

    as_csv = run("models", "--csv", "--type", "checkpoint", "--server-id", "gpu-01", *data, cwd=tmp_path)
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["rel_name"] for r in rows] == ["base.safetensors"] and rows[0]["base"] == "sdxl" and len(rows[0]["sha256"]) == 64
    table = run("models", "--server-id", "gpu-01", *data, cwd=tmp_path).stdout.splitlines()
    assert table[0].split()[:4] == ["state", "role", "type", "base"] and len(table) == 6


def test_show_gives_hashes_fields_with_sources_and_duplicates_by_path_sha256_or_autov2(tmp_path, models):
    data = ["--data", str(tmp_path / "node"), "--server-id", "gpu-01"]
    run("scan", str(models), "--hash", *data, cwd=tmp_path)
    hero = models / "Lora" / "hero.safetensors"
    sha = hashlib.sha256(hero.read_bytes()).hexdigest()
    for ref in (str(hero), sha, sha[:10]):
        out = run("show", ref, "--json", *data, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        details = json.loads(out.stdout)
        assert {d["rel_name"] for d in details} >= {"hero.safetensors"}
        hero_detail = next(d for d in details if d["rel_name"] == "hero.safetensors")
        assert hero_detail["fields"]["output_name"] == {"value": "hero_v1", "source": "embedded"}
        assert hero_detail["copies"] == sorted([str(hero), str(models / "Lora" / "copies" / "hero-again.safetensors")])
    text = run("show", os.path.relpath(hero, tmp_path), *data, cwd=tmp_path)
    assert f"sha256           {sha}" in text.stdout and "output_name      hero_v1  [embedded]" in text.stdout
    assert "duplicates" in text.stdout
    assert "no file, SHA256 or AutoV2 'nope'" in one_line_error(run("show", "nope", *data, cwd=tmp_path))


def test_the_node_keeps_its_state_in_a_per_user_folder_whatever_the_working_folder(tmp_path, models, central_server):
    home = {"HOME": str(tmp_path / "home"), "XDG_DATA_HOME": str(tmp_path / "home" / ".local" / "share")}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = run("scan", str(models), "--hash", "--json", "--server-id", "gpu-01", "--push", central_server.base_url,
                cwd=tmp_path / "a", env=home)
    assert json.loads(first.stdout)["hashesCalculated"] == 4
    state = tmp_path / "home" / ".local" / "share" / "modelsync"
    assert (state / "catalog.db").is_file() and "gpu-01" in json.loads((state / "node_tokens.json").read_text())
    again = run("scan", str(models), "--hash", "--json", "--server-id", "gpu-01", "--push", central_server.base_url,
                cwd=tmp_path / "b", env=home)
    assert again.returncode == 0, again.stderr  # the stored token was found from another folder
    assert json.loads(again.stdout)["hashesCalculated"] == 0
    renamed = run("scan", str(models), "--hash", "--json", "--server-id", "gpu-renamed", cwd=tmp_path / "b", env=home)
    assert json.loads(renamed.stdout)["hashesCalculated"] == 0  # the cache is the files', not the node id's
    assert not (tmp_path / "a" / "data").exists() and not (tmp_path / "b" / "data").exists()


def test_a_token_given_once_is_stored_and_tokens_are_issued_locally_or_remotely(tmp_path, models, central_server):
    issued = run("token", "issue", "gpu-07", "--data", str(central_server.data_path), cwd=tmp_path)
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    push = ("scan", str(models), "--server-id", "gpu-07", "--data", str(tmp_path / "node"), "--push", central_server.base_url)
    assert run(*push, "--token", token, cwd=tmp_path).returncode == 0
    assert run(*push, cwd=tmp_path).returncode == 0  # stored: not given again

    remote = run("token", "issue", "gpu-07", "--server", central_server.base_url, "--admin-token", central_server.admin_token,
                 "--json", cwd=tmp_path)
    assert remote.returncode == 0, remote.stderr
    assert json.loads(remote.stdout)["server_id"] == "gpu-07" and json.loads(remote.stdout)["token"] != token
    stale = one_line_error(run(*push, cwd=tmp_path))  # the reset made the stored token stale
    assert "was it reset?" in stale and str(tmp_path / "node" / "node_tokens.json") in stale and "token issue gpu-07" in stale

    none_here = one_line_error(run("token", "issue", "gpu-07", "--data", str(tmp_path / "empty"), cwd=tmp_path))
    assert "no registry at" in none_here and "--server URL" in none_here
    no_admin = one_line_error(run("token", "issue", "gpu-07", "--server", central_server.base_url, cwd=tmp_path))
    assert "needs the admin token" in no_admin


def test_fleet_and_job_check_read_the_central_server(tmp_path, models, central_server):
    run("scan", str(models), "--hash", "--server-id", "gpu-01", "--data", str(tmp_path / "node"), "--push",
        central_server.base_url, cwd=tmp_path)
    server = ("--server", central_server.base_url)
    nodes = run("fleet", "nodes", *server, "--json", cwd=tmp_path)
    assert [n["id"] for n in json.loads(nodes.stdout)["servers"]] == ["gpu-01"]
    assert json.loads(nodes.stdout)["servers"][0]["broken_count"] == 1
    assert run("fleet", "nodes", *server, cwd=tmp_path).stdout.splitlines()[1].startswith("gpu-01")
    listed = json.loads(run("fleet", "models", *server, "--type", "lora", "--json", cwd=tmp_path).stdout)
    assert {m["type"] for m in listed["models"]} == {"lora"} and len(listed["models"]) == 2

    job = tmp_path / "job.json"
    job.write_text(json.dumps({"prompt": "a cat <lora:hero_v1:0.8>", "override_settings": {"sd_model_checkpoint": "base"}}))
    ok = run("job", "check", str(job), *server, "--node", "gpu-01", "--json", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["payload"]["override_settings"]["sd_model_checkpoint"] == "base.safetensors"
    missing = run("job", "check", "-", *server, cwd=tmp_path, stdin="a dog <lora:nowhere:1>\nSteps: 20, Sampler: Euler")
    assert missing.returncode == 1 and missing.stdout.startswith("cannot run")
    assert "  lora 'nowhere': unknown (" in missing.stdout
    assert json.loads(run("fleet", "wanted", *server, "--json", cwd=tmp_path).stdout)["wanted"] == []  # a look only


@pytest.mark.parametrize("args, expected", [
    (("scan", "{models}", "--data", "{node}", "--push", "http://127.0.0.1:9", "--server-id", "n"),
     "nothing listens at http://127.0.0.1:9/"),
    (("scan", "{models}", "--data", "{node}", "--push", "http://no-such-host.invalid:8188", "--server-id", "n"),
     "unknown host 'no-such-host.invalid'"),
    (("scan", "{models}", "--data", "{node}", "--push", "127.0.0.1:8188", "--server-id", "n"),
     "write it with its scheme, e.g. http://127.0.0.1:8188"),
    (("fleet", "nodes", "--server", "{server}/dashboard"), "not as a modelsync server does: check the URL"),
    (("fleet", "nodes"), "say which central server: --server"),
    (("hash", "/nonexistent.safetensors"), "/nonexistent.safetensors: no such file"),
    (("scan", "{models}", "--data", "{file}"), "is a file: remove it, or give another folder"),
    (("models", "--data", "{file}/sub"), "cannot create the data folder"),
    (("serve", "--port", "99999"), "a TCP port is 1-65535"),
    (("scan", "{models}", "--workers", "0"), "must be a whole number of at least 1"),
    (("scan", "{models}", "--max-size", "lots"), "is not a size"),
])
def test_expected_failures_are_one_line_with_the_fix(tmp_path, models, central_server, args, expected):
    (tmp_path / "a-file").write_text("x")
    fill = {"models": str(models), "server": central_server.base_url, "file": str(tmp_path / "a-file"),
            "node": str(tmp_path / "node")}
    out = run(*(a.format(**fill) for a in args), cwd=tmp_path)
    if "--push" in args:  # only the push failed: the scan's report is still printed, then the one line
        assert "Scan complete!" in out.stdout and out.returncode == 1
        out = subprocess.CompletedProcess(out.args, out.returncode, "", out.stderr)
    assert expected in one_line_error(out)


def test_small_things(tmp_path, models):
    from modelsync import __version__

    assert run("--version", cwd=tmp_path).stdout.strip() == f"modelsync {__version__}"
    quiet = run("scan", str(models), "--data", str(tmp_path / "n"), "--max-size", "15GB", cwd=tmp_path)
    assert quiet.returncode == 0 and " INFO " not in quiet.stderr
    verbose = run("scan", str(models), "--data", str(tmp_path / "n"), "-v", cwd=tmp_path)  # -v after the command
    assert " DEBUG " in verbose.stderr
    small = run("scan", str(models), "--hash", "--json", "--max-size", "1KiB", "--data", str(tmp_path / "m"), cwd=tmp_path)
    assert json.loads(small.stdout)["hashesSkipped"] == 4


def test_backup_copies_the_live_registry_while_the_server_runs(tmp_path, models, central_server):
    run("scan", str(models), "--hash", "--server-id", "gpu-01", "--data", str(tmp_path / "node"), "--push",
        central_server.base_url, cwd=tmp_path)
    out = run("backup", "--data", str(central_server.data_path), "--to", str(tmp_path / "copies"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    copy = Path(out.stdout.strip())
    assert copy.parent == tmp_path / "copies"
    import sqlite3

    with sqlite3.connect(copy) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM model_server_availability").fetchone()[0] == 4
    assert "no registry at" in one_line_error(run("backup", "--data", str(tmp_path / "none"), cwd=tmp_path))


def test_serve_refuses_to_start_in_one_line_and_changes_nothing(tmp_path):
    import socket
    import sqlite3

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        data = tmp_path / "data"
        busy = run("serve", "--port", port, cwd=tmp_path, env={"CONFIG_DATA_PATH": str(data)})
        assert f"port {port} on 127.0.0.1 is in use" in one_line_error(busy)
        assert list(data.iterdir()) == []  # no registry migrated, no admin token generated

    newer = tmp_path / "newer"
    newer.mkdir()
    with sqlite3.connect(newer / "registry.db") as conn:
        conn.execute("PRAGMA user_version = 999")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = str(probe.getsockname()[1])
    refused = run("serve", "--port", free, cwd=tmp_path, env={"CONFIG_DATA_PATH": str(newer)})
    assert "a downgrade is refused" in one_line_error(refused)
    (tmp_path / "a-file").write_text("x")
    assert "is a file" in one_line_error(run("serve", cwd=tmp_path, env={"CONFIG_DATA_PATH": str(tmp_path / "a-file")}))
    bad_env = run("serve", cwd=tmp_path, env={"CONFIG_DATA_PATH": str(data), "MODELSYNC_REGISTRATION": "sometimes"})
    assert "MODELSYNC_REGISTRATION must be one of" in one_line_error(bad_env)


def test_a_refusal_of_the_central_server_is_one_line_with_the_fix(tmp_path, make_server):
    server = make_server(queue_token="q" * 32)
    out = run("fleet", "wanted", "--server", server.base_url, cwd=tmp_path)
    line = one_line_error(out)
    assert "HTTP 401" in line and "queue token" in line and "--token" in line
    assert run("fleet", "wanted", "--server", server.base_url, "--token", "q" * 32, "--json", cwd=tmp_path).returncode == 0
    wrong = one_line_error(run("fleet", "wanted", "--server", server.base_url, "--token", "x" * 32, cwd=tmp_path))
    assert "HTTP 403" in wrong
