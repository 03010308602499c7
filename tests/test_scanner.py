import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import model_factory
from modelsync.shared.scan import scanner as scanner_module
from modelsync.shared.catalog import migrate, open_catalog
from modelsync.shared.records import Root
from modelsync.shared.scan.scanner import scan


@pytest.fixture
def db(tmp_path):
    catalog = open_catalog(tmp_path / "data" / "catalog.db")
    migrate(catalog)
    return catalog


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_tree(root: Path) -> dict[str, Path]:
    files = {
        "ck": model_factory.write_checkpoint(root / "Stable-diffusion" / "sd15" / "base.safetensors", base="sd1"),
        "xl": model_factory.write_checkpoint(root / "Stable-diffusion" / "xl.safetensors", base="sdxl"),
        "lora": model_factory.write_lora(root / "Lora" / "style.safetensors", base="sdxl", metadata={"ss_output_name": "styleAlias"}),
        "vae": model_factory.write_vae(root / "VAE" / "vae.safetensors"),
    }
    return files


def roots(root: Path) -> list[Root]:
    return [Root(str(root / "Stable-diffusion"), "checkpoint"), Root(str(root / "Lora"), "lora"), Root(str(root / "VAE"), "vae")]


def files_table(db) -> dict[str, dict]:
    return {r["rel_name"]: r for r in db.query("SELECT * FROM model_server_availability")}


def test_scan_then_hash_then_rescan_changes_nothing(tmp_path, db):
    build_tree(tmp_path / "m")
    first = scan(roots(tmp_path / "m"), db, "node1")
    assert first.stats.total == 4 and first.stats.added == 4 and first.stats.hashesCalculated == 0
    assert first.stats.hashesSkipped == 4
    assert first.message.splitlines()[:4] == [
        "Scan complete! Found 4 model files",
        "- Added: 4 new models to database",
        "- Updated: 0 models with new metadata",
        "- Calculated: 0 hashes",
    ]
    assert all(r["model_id"] is None for r in files_table(db).values())  # listed by path before hashing

    second = scan(roots(tmp_path / "m"), db, "node1", calculate_hashes=True)
    assert (second.stats.added, second.stats.updated, second.stats.hashesCalculated) == (0, 4, 4)
    for rel, row in files_table(db).items():
        model = db["models"].get(row["model_id"])
        path = Path(row["path"])
        assert model["hash_sha256"] == sha256_of(path)
        assert model["hash_autov2"] == model["hash_sha256"][:10]

    third = scan(roots(tmp_path / "m"), db, "node1", calculate_hashes=True)
    s = third.stats
    assert (s.added, s.updated, s.removed, s.hashesCalculated, s.hashesCached) == (0, 0, 0, 0, 4)


def test_rescan_of_unchanged_tree_reads_no_model_bytes(tmp_path, db, monkeypatch):
    build_tree(tmp_path / "m")
    scan(roots(tmp_path / "m"), db, "node1", calculate_hashes=True)

    def forbidden(*args, **kwargs):
        raise AssertionError("model bytes were read")

    monkeypatch.setattr(scanner_module, "read_header", forbidden)
    monkeypatch.setattr(scanner_module, "hash_files", forbidden)
    report = scan(roots(tmp_path / "m"), db, "node1", calculate_hashes=True)
    assert report.stats.hashesCached == 4 and report.stats.errors == 0


def test_roles_rel_names_content_and_aliases_are_recorded(tmp_path, db):
    build_tree(tmp_path / "m")
    scan(roots(tmp_path / "m"), db, "node1", calculate_hashes=True)
    rows = files_table(db)
    assert rows["sd15/base.safetensors"]["role"] == "checkpoint"
    assert rows["sd15/base.safetensors"]["content_type"] == "checkpoint"
    assert rows["sd15/base.safetensors"]["content_base"] == "sd1"
    assert rows["style.safetensors"]["role"] == "lora"
    lora = db["models"].get(rows["style.safetensors"]["model_id"])
    assert lora["type"] == "lora" and lora["base"] == "sdxl" and lora["output_name"] == "styleAlias"
    assert lora["hash_autov3"] is not None
    aliases = {(r["kind"], r["alias"]) for r in db.query("SELECT kind, alias FROM model_aliases WHERE model_id = ?", [lora["id"]])}
    assert ("output_name", "stylealias") in aliases and ("stem", "style") in aliases
    ck_aliases = {r["alias"] for r in db.query("SELECT alias FROM model_aliases WHERE model_id = ?", [rows["sd15/base.safetensors"]["model_id"]])}
    assert {"sd15/base.safetensors", "sd15_base", "base"} <= ck_aliases


def test_same_content_at_two_paths_is_one_model_listed_as_duplicate(tmp_path, db):
    files = build_tree(tmp_path / "m")
    copy = tmp_path / "m" / "Lora" / "copy" / "style_copy.safetensors"
    copy.parent.mkdir()
    shutil.copy(files["lora"], copy)
    # same file name, different content: never merged
    model_factory.write_lora(tmp_path / "m" / "Lora" / "other" / "style.safetensors", base="sd1")
    report = scan(roots(tmp_path / "m"), db, "node1", calculate_hashes=True)
    assert report.stats.duplicates == 1
    assert report.duplicates[0].paths == sorted([str(files["lora"]), str(copy)])
    rows = files_table(db)
    assert rows["style.safetensors"]["model_id"] == rows["copy/style_copy.safetensors"]["model_id"]
    assert rows["other/style.safetensors"]["model_id"] != rows["style.safetensors"]["model_id"]
    assert db["models"].count == 5


def test_files_gone_from_disk_are_removed_but_models_stay(tmp_path, db):
    files = build_tree(tmp_path / "m")
    scan(roots(tmp_path / "m"), db, "node1", calculate_hashes=True)
    files["xl"].unlink()
    report = scan(roots(tmp_path / "m"), db, "node1", calculate_hashes=True)
    assert report.stats.removed == 1 and report.stats.total == 3 and not report.unavailable
    assert db["models"].count == 4


def test_changed_file_is_rehashed(tmp_path, db):
    files = build_tree(tmp_path / "m")
    scan(roots(tmp_path / "m"), db, "node1", calculate_hashes=True)
    model_factory.write_lora(files["lora"], base="sd1")
    os.utime(files["lora"], ns=(1, 1))
    report = scan(roots(tmp_path / "m"), db, "node1", calculate_hashes=True)
    assert report.stats.hashesCalculated == 1 and report.stats.updated == 1
    row = files_table(db)["style.safetensors"]
    assert db["models"].get(row["model_id"])["hash_sha256"] == sha256_of(files["lora"])


def test_files_over_the_size_limit_are_not_hashed(tmp_path, db):
    build_tree(tmp_path / "m")
    big = model_factory.write_padded(tmp_path / "m" / "Lora" / "big.safetensors", 3 * 1024 * 1024)
    report = scan(roots(tmp_path / "m"), db, "node1", calculate_hashes=True, max_hash_size=2 * 1024 * 1024)
    assert report.stats.hashesSkipped == 1 and report.stats.hashesCalculated == 4
    assert files_table(db)["big.safetensors"]["model_id"] is None
    assert big.exists()


def write_raw(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_bad_model_files_are_listed_with_reasons_and_the_scan_goes_on(tmp_path, db):
    build_tree(tmp_path / "m")
    lora_dir = tmp_path / "m" / "Lora"
    header = json.dumps({"__metadata__": ["not", "a", "dict"], "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    bad = {
        "truncated.safetensors": b"\x10\x00",
        "garbage.safetensors": os.urandom(4096),
        "toolong.safetensors": struct.pack("<Q", 10**12) + b"{}",
        "badjson.safetensors": struct.pack("<Q", 5) + b"{nope",
        "listmeta.safetensors": struct.pack("<Q", len(header)) + header + b"\x00" * 4,
    }
    for name, data in bad.items():
        write_raw(lora_dir / name, data)
    report = scan(roots(tmp_path / "m"), db, "node1", calculate_hashes=True)
    problems = {Path(p.path).name: p.reason for p in report.problems}
    for name in bad:
        assert name in problems, name
        assert problems[name]
    assert report.stats.total == 9 and report.stats.errors == len(problems)
    rows = files_table(db)
    broken = set(bad) - {"listmeta.safetensors"}
    assert rows["listmeta.safetensors"]["model_id"] is not None  # a part ignored: still a model, hashed
    assert not broken & set(rows)  # not whole models: never offered, never hashed
    held = {r["rel_name"]: r for r in db.query("SELECT * FROM unusable_files")}
    assert set(held) == broken and all(r["state"] == "broken" and r["model_id"] is None for r in held.values())
    assert held["truncated.safetensors"]["reason"] == problems["truncated.safetensors"]
    assert report.stats.broken == len(broken) and report.stats.hashesCalculated == 5
    assert rows["style.safetensors"]["content_type"] == "lora"
    # the problems are reported again on a re-scan that reads nothing
    again = scan(roots(tmp_path / "m"), db, "node1", calculate_hashes=True)
    assert {Path(p.path).name for p in again.problems} == set(problems) and again.stats.hashesCalculated == 0


def test_malformed_and_huge_sidecars_are_reported(tmp_path, db):
    files = build_tree(tmp_path / "m")
    write_raw(files["lora"].with_suffix(".json"), b'{"description": "broken')
    write_raw(tmp_path / "m" / "Lora" / "other.civitai.info", b"\xff\xfe not utf8")
    write_raw(tmp_path / "m" / "VAE" / "vae.json", b'{"notes": "' + b"a" * (6 * 1024 * 1024) + b'"}')
    report = scan(roots(tmp_path / "m"), db, "node1", calculate_hashes=True)
    reasons = {Path(p.path).name: p.reason for p in report.problems}
    assert set(reasons) == {"style.json", "other.civitai.info", "vae.json"}
    assert report.stats.total == 4 and report.stats.hashesCalculated == 4


def test_file_deleted_during_the_scan_is_reported_and_others_kept(tmp_path, db, monkeypatch):
    files = build_tree(tmp_path / "m")
    real_hash_files = scanner_module.hash_files

    def delete_then_hash(paths, **kwargs):
        files["vae"].unlink()
        return real_hash_files(paths, **kwargs)

    monkeypatch.setattr(scanner_module, "hash_files", delete_then_hash)
    report = scan(roots(tmp_path / "m"), db, "node1", calculate_hashes=True)
    assert [Path(p.path).name for p in report.problems] == ["vae.safetensors"]
    assert "vanished" in report.problems[0].reason
    assert set(files_table(db)) == {"sd15/base.safetensors", "xl.safetensors", "style.safetensors"}


def test_file_growing_during_hashing_is_reported(tmp_path, db, monkeypatch):
    build_tree(tmp_path / "m")
    growing = model_factory.write_padded(tmp_path / "m" / "Lora" / "growing.safetensors", 24 * 1024 * 1024)
    real_hash_files = scanner_module.hash_files

    def grow_while_hashing(paths, on_bytes=None, **kwargs):
        grown = []

        def grow(n):
            if not grown:
                grown.append(True)
                with open(growing, "ab") as f:
                    f.write(b"\x00" * 1024)
            if on_bytes:
                on_bytes(n)

        return real_hash_files(paths, **{**kwargs, "on_bytes": grow, "workers": 1})

    monkeypatch.setattr(scanner_module, "hash_files", grow_while_hashing)
    report = scan([Root(str(tmp_path / "m" / "Lora"), "lora")], db, "node1", calculate_hashes=True)
    assert [Path(p.path).name for p in report.problems] == ["growing.safetensors"]
    row = files_table(db)["growing.safetensors"]
    assert row["model_id"] is None and row["problem"]
    assert files_table(db)["style.safetensors"]["model_id"] is not None


def test_symlink_loop_and_non_utf8_names_do_not_stop_the_scan(tmp_path, db):
    build_tree(tmp_path / "m")
    os.symlink(tmp_path / "m" / "Lora", tmp_path / "m" / "Lora" / "loop")
    with open(os.fsencode(tmp_path / "m" / "Lora") + b"/bad\xff.safetensors", "wb") as f:
        f.write(b"x")
    report = scan(roots(tmp_path / "m"), db, "node1", calculate_hashes=True)
    assert report.stats.total == 4 and report.stats.hashesCalculated == 4
    assert len(report.problems) == 1 and "UTF-8" in report.problems[0].reason


PERMISSION_SCRIPT = """
import json, os, sys
from modelsync.shared.catalog import migrate, open_catalog
from modelsync.shared.records import Root
from modelsync.shared.scan.scanner import scan
db = open_catalog(sys.argv[1]); migrate(db)
os.setgid(65534); os.setuid(65534)  # after the imports: the interpreter's own files are root's
report = scan([Root(sys.argv[2], "lora")], db, "node1", calculate_hashes=True)
print(json.dumps(report.to_dict()))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="drops privileges to nobody; needs root to start")
def test_permission_denied_file_is_reported(tmp_path):
    base = Path(tempfile.mkdtemp(prefix="modelsync-perm-"))
    try:
        base.chmod(0o777)
        lora = base / "Lora"
        model_factory.write_lora(lora / "ok.safetensors", base="sd1")
        model_factory.write_lora(lora / "secret.safetensors", base="sd1")
        lora.chmod(0o755)
        (lora / "ok.safetensors").chmod(0o644)
        (lora / "secret.safetensors").chmod(0o600)
        out = subprocess.run(
            [sys.executable, "-c", PERMISSION_SCRIPT, str(base / "catalog.db"), str(lora)],
            capture_output=True, text=True, check=True, cwd=base,
        )
        result = json.loads(out.stdout)
        assert result["total"] == 2 and result["hashesCalculated"] == 1
        assert [Path(p["path"]).name for p in result["problems"]] == ["secret.safetensors"]
        assert "ermission" in result["problems"][0]["reason"]
    finally:
        shutil.rmtree(base)


def test_metadata_priority_a1111_over_civitai_over_embedded(tmp_path, db):
    lora_dir = tmp_path / "m" / "Lora"
    lora = model_factory.write_lora(
        lora_dir / "hero.safetensors",
        base="sd1",
        metadata={"ss_output_name": "heroOut", "modelspec.title": "Embedded Title", "modelspec.description": "embedded desc"},
    )
    sha = sha256_of(lora)
    (lora_dir / "hero.json").write_text(json.dumps({"description": "from a1111", "sd version": "SDXL", "activation text": "hero, cape", "preferred weight": 0.8}))
    civitai = json.loads((Path(__file__).parent / "fixtures" / "civitai" / "civitai_model_version_1387174_lora_flux_lora-manager.json").read_text())
    civitai["files"][0]["hashes"] = {"SHA256": sha.upper(), "AutoV2": sha[:10].upper()}
    (lora_dir / "renamed-by-user.civitai.info").write_text(json.dumps(civitai))  # matched by the hash inside
    scan([Root(str(lora_dir), "lora")], db, "node1", calculate_hashes=True)
    model = db["models"].get(files_table(db)["hero.safetensors"]["model_id"])
    sources = json.loads(model["field_sources"])
    assert model["description"] == "from a1111" and sources["description"] == "a1111"
    assert model["base"] == "sdxl" and sources["base"] == "a1111"
    assert model["preferred_weight"] == 0.8
    assert model["civitai_version_id"] == civitai["id"] and sources["civitai_version_id"] == "civitai_json"
    assert model["name"] == civitai["model"]["name"] and sources["name"] == "civitai_json"
    assert model["output_name"] == "heroOut" and sources["output_name"] == "embedded"
    assert model["metadata_source"] == "a1111"


def test_existing_values_are_never_overwritten_by_a_later_sidecar(tmp_path, db):
    lora_dir = tmp_path / "m" / "Lora"
    model_factory.write_lora(lora_dir / "x.safetensors", base="sd1", metadata={"modelspec.description": "first"})
    scan([Root(str(lora_dir), "lora")], db, "node1", calculate_hashes=True)
    (lora_dir / "x.json").write_text(json.dumps({"description": "later", "notes": "new note"}))
    report = scan([Root(str(lora_dir), "lora")], db, "node1", calculate_hashes=True)
    model = db["models"].get(files_table(db)["x.safetensors"]["model_id"])
    assert model["description"] == "first"  # kept
    assert model["notes"] == "new note"  # null filled
    assert report.stats.updated == 1


def test_a_status_line_every_ten_models_and_debug_decisions(tmp_path, db, caplog):
    for i in range(12):
        model_factory.write_lora(tmp_path / "l" / f"x{i}.safetensors", base="sd1")
    with caplog.at_level("DEBUG", logger="modelsync.shared.scan.scanner"):
        scan([Root(str(tmp_path / "l"), "lora")], db, "node1", calculate_hashes=True)
    messages = [r.getMessage() for r in caplog.records]
    assert "hashing: 10/12 models" in messages and "reading: 10/12 models" in messages
    assert any(m.endswith("type=lora base=sd1") for m in messages)
    assert any(m.endswith(": type from embedded") for m in messages)
    assert any("hashed, sha256" in m for m in messages)


def test_progress_reports_files_bytes_and_eta(tmp_path, db):
    for i in range(3):
        model_factory.write_padded(tmp_path / "l" / f"big{i}.safetensors", 9 * 1024 * 1024)
    seen = []
    scan([Root(str(tmp_path / "l"), "lora")], db, "node1", calculate_hashes=True, progress=seen.append)
    hashing = [p for p in seen if p.phase == "hashing"]
    assert hashing[-1].files_done == 3 and hashing[-1].bytes_done == hashing[-1].bytes_total
    assert hashing[-1].bytes_total == sum(p.stat().st_size for p in (tmp_path / "l").iterdir())
    assert any(p.eta_seconds is not None for p in hashing)
    assert [p.phase for p in seen][0] == "discovering" and seen[-1].phase == "done"
