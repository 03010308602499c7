"""A model folder that cannot be seen (missing, a file, unreadable, an unmounted share, a link to nowhere) never wipes
the node: its files are kept with their hashes, flagged unreachable, not offered to jobs, and come back unhashed-free."""
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import model_factory
from support_server import central_server  # noqa: F401  (fixture)

from modelsync.shared.scan import discovery as discovery_module
from modelsync.shared.catalog import migrate, open_catalog
from modelsync.shared.records import Root
from modelsync.shared.scan.scanner import scan

MODELSYNC = shutil.which("modelsync") or ""


@pytest.fixture
def db(tmp_path):
    catalog = open_catalog(tmp_path / "data" / "catalog.db")
    migrate(catalog)
    return catalog


def tree(base: Path) -> list[Root]:
    model_factory.write_lora(base / "Lora" / "hero.safetensors", base="sdxl")
    model_factory.write_lora(base / "Lora" / "styles" / "ink.safetensors", base="sd1")
    model_factory.write_checkpoint(base / "Stable-diffusion" / "base.safetensors", base="sdxl")
    return [Root(str(base / "Lora"), "lora"), Root(str(base / "Stable-diffusion"), "checkpoint")]


def usable(db) -> set[str]:
    return {r["rel_name"] for r in db.query("SELECT rel_name FROM model_server_availability")}


def held(db) -> dict[str, dict]:
    return {r["rel_name"]: r for r in db.query("SELECT * FROM unusable_files")}


def assert_lora_kept(db, report, folder: str, reason: str) -> None:
    assert [(u.path, u.files_kept) for u in report.unavailable] == [(folder, 2)]
    assert reason in report.unavailable[0].reason
    assert usable(db) == {"base.safetensors"}
    kept = held(db)
    assert set(kept) == {"hero.safetensors", "styles/ink.safetensors"}
    assert all(r["state"] == "unreachable" and r["model_id"] is not None and reason in r["reason"] for r in kept.values())
    assert report.stats.removed == 0 and report.stats.unreachable == 2
    assert "Unavailable" in report.message and "Removed" not in report.message


def assert_back_without_hashing(db, roots) -> None:
    back = scan(roots, db, "gpu-01", calculate_hashes=True)
    assert back.stats.hashesCalculated == 0 and back.stats.hashesCached == 3 and not back.unavailable
    assert usable(db) == {"hero.safetensors", "styles/ink.safetensors", "base.safetensors"} and held(db) == {}


def test_a_missing_root_keeps_its_files_and_they_come_back_without_hashing(tmp_path, db):
    roots = tree(tmp_path / "m")
    scan(roots, db, "gpu-01", calculate_hashes=True)
    (tmp_path / "m" / "Lora").rename(tmp_path / "m" / "Lora-away")
    report = scan(roots, db, "gpu-01", calculate_hashes=True)
    assert_lora_kept(db, report, roots[0].path, "does not exist")
    (tmp_path / "m" / "Lora-away").rename(tmp_path / "m" / "Lora")
    assert_back_without_hashing(db, roots)


def test_a_root_that_is_a_file_is_unavailable(tmp_path, db):
    roots = tree(tmp_path / "m")
    scan(roots, db, "gpu-01", calculate_hashes=True)
    (tmp_path / "m" / "Lora").rename(tmp_path / "m" / "Lora-away")
    (tmp_path / "m" / "Lora").write_text("not a folder")
    assert_lora_kept(db, scan(roots, db, "gpu-01", calculate_hashes=True), roots[0].path, "not a folder")


def test_an_empty_root_while_the_catalog_holds_files_is_an_unmounted_share(tmp_path, db):
    roots = tree(tmp_path / "m")
    scan(roots, db, "gpu-01", calculate_hashes=True)
    (tmp_path / "m" / "Lora").rename(tmp_path / "m" / "Lora-away")
    (tmp_path / "m" / "Lora").mkdir()  # the mount point, nothing mounted on it
    assert_lora_kept(db, scan(roots, db, "gpu-01", calculate_hashes=True), roots[0].path, "empty")
    (tmp_path / "m" / "Lora").rmdir()
    (tmp_path / "m" / "Lora-away").rename(tmp_path / "m" / "Lora")
    assert_back_without_hashing(db, roots)


def test_an_unreadable_root_keeps_its_files(tmp_path, db, monkeypatch):
    roots = tree(tmp_path / "m")
    scan(roots, db, "gpu-01", calculate_hashes=True)
    real_scandir = os.scandir

    def failing_scandir(path):
        if str(path) == roots[0].path:
            raise OSError(errno.EIO, "Input/output error")
        return real_scandir(path)

    monkeypatch.setattr(discovery_module.os, "scandir", failing_scandir)
    assert_lora_kept(db, scan(roots, db, "gpu-01", calculate_hashes=True), roots[0].path, "Input/output error")
    monkeypatch.undo()
    assert_back_without_hashing(db, roots)


def test_a_symlinked_folder_whose_share_is_gone_keeps_its_files(tmp_path, db):
    share = tmp_path / "nas" / "loras"
    model_factory.write_lora(share / "hero.safetensors", base="sdxl")
    model_factory.write_lora(share / "styles" / "ink.safetensors", base="sd1")
    model_factory.write_checkpoint(tmp_path / "m" / "Stable-diffusion" / "base.safetensors", base="sdxl")
    (tmp_path / "m" / "Lora").mkdir(parents=True)
    model_factory.write_lora(tmp_path / "m" / "Lora" / "local.safetensors", base="sd1")
    os.symlink(share, tmp_path / "m" / "Lora" / "nas")
    roots = [Root(str(tmp_path / "m" / "Lora"), "lora"), Root(str(tmp_path / "m" / "Stable-diffusion"), "checkpoint")]
    scan(roots, db, "gpu-01", calculate_hashes=True)
    share.rename(tmp_path / "nas" / "away")
    report = scan(roots, db, "gpu-01", calculate_hashes=True)
    link = str(tmp_path / "m" / "Lora" / "nas")
    assert [(u.path, u.files_kept) for u in report.unavailable] == [(link, 2)]
    assert set(held(db)) == {"nas/hero.safetensors", "nas/styles/ink.safetensors"}
    assert usable(db) == {"local.safetensors", "base.safetensors"}
    share.mkdir()  # the link's target exists again, but empty: still not the share
    report = scan(roots, db, "gpu-01", calculate_hashes=True)
    assert [u.path for u in report.unavailable] == [link] and "empty" in report.unavailable[0].reason
    share.rmdir()
    (tmp_path / "nas" / "away").rename(share)
    back = scan(roots, db, "gpu-01", calculate_hashes=True)
    assert back.stats.hashesCalculated == 0 and held(db) == {} and len(usable(db)) == 4


def test_a_plain_folder_emptied_by_the_user_is_removed(tmp_path, db):
    roots = tree(tmp_path / "m")
    scan(roots, db, "gpu-01", calculate_hashes=True)
    (tmp_path / "m" / "Lora" / "styles" / "ink.safetensors").unlink()
    report = scan(roots, db, "gpu-01", calculate_hashes=True)
    assert report.stats.removed == 1 and not report.unavailable and held(db) == {}


def test_forgetting_unreachable_files_takes_an_explicit_flag(tmp_path, db):
    roots = tree(tmp_path / "m")
    scan(roots, db, "gpu-01", calculate_hashes=True)
    shutil.rmtree(tmp_path / "m" / "Lora")
    scan(roots, db, "gpu-01", calculate_hashes=True)
    assert len(held(db)) == 2
    report = scan(roots, db, "gpu-01", calculate_hashes=True, forget_unreachable=True)
    assert report.stats.removed == 2 and held(db) == {} and usable(db) == {"base.safetensors"}
    assert [u.files_kept for u in report.unavailable] == [0]


def test_a_real_tmpfs_share_unmounted_keeps_its_files(tmp_path, db):
    mount_point = tmp_path / "m" / "Lora"
    mount_point.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        roots = tree(tmp_path / "m")
        scan(roots, db, "gpu-01", calculate_hashes=True)
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
    assert_lora_kept(db, scan(roots, db, "gpu-01", calculate_hashes=True), roots[0].path, "empty")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [MODELSYNC] if MODELSYNC else [sys.executable, "-m", "modelsync.cli.main"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_a_typo_in_the_root_never_wipes_the_node_on_the_central_server(tmp_path, central_server):
    models = tmp_path / "webui" / "models"
    model_factory.write_lora(models / "Lora" / "hero.safetensors", base="sdxl")
    model_factory.write_checkpoint(models / "Stable-diffusion" / "base.safetensors", base="sdxl")
    push = ("--hash", "--push", central_server.base_url, "--server-id", "gpu-01", "--data", str(tmp_path / "data"))
    first = run_cli("scan", str(models), *push, cwd=tmp_path)
    assert first.returncode == 0, first.stderr

    typo = run_cli("scan", str(tmp_path / "webui" / "modles"), *push, "--json", cwd=tmp_path)
    assert typo.returncode == 1
    report = json.loads(typo.stdout)  # the report is still printed
    assert report["removed"] == 0 and report["unavailable"][0]["files_kept"] == 2
    assert "does not exist" in report["unavailable"][0]["reason"] and report["push"]["removed"] == 0
    assert "unavailable" in typo.stderr

    node = next(s for s in central_server.get("/api/v1/servers").json()["servers"] if s["id"] == "gpu-01")
    assert (node["file_count"], node["unreachable_count"]) == (0, 2)
    assert node["unavailable"][0]["path"].endswith("modles")
    held_files = central_server.get("/api/v1/servers/gpu-01/files", params={"state": "unreachable"}).json()
    assert held_files["total"] == 2 and all(f["hash_autov2"] for f in held_files["files"])
    check = central_server.post("/api/v1/jobs/availability", json={"job": {"prompt": "<lora:hero:1>"}}).json()
    assert check["model_availability"]["available"] is False  # unreachable files are never offered

    again = run_cli("scan", str(models), *push, "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    back = json.loads(again.stdout)
    assert back["hashesCalculated"] == 0 and back["push"]["added"] == 2
    check = central_server.post("/api/v1/jobs/availability", json={"job": {"prompt": "<lora:hero:1>"}}).json()
    assert check["model_availability"]["available"] is True


def test_a_failed_push_exits_non_zero_and_still_prints_the_report(tmp_path):
    model_factory.write_lora(tmp_path / "m" / "hero.safetensors", base="sdxl")
    out = run_cli("scan", str(tmp_path / "m"), "--push", "http://127.0.0.1:9", "--server-id", "gpu-01",
                  "--data", str(tmp_path / "data"), cwd=tmp_path)
    assert out.returncode == 1
    assert "Scan complete! Found 1 model files" in out.stdout and "push" in out.stderr and "Traceback" not in out.stderr
