import os
from pathlib import Path

import pytest

from modelsync.shared.scan.discovery import discover
from modelsync.shared.scan.model_folders import roots_for
from modelsync.shared.records import Root


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def rel_names(found) -> dict[str, str | None]:
    return {m.rel_name: m.root.role for m in found.models}


def test_finds_every_model_extension_in_any_case_recursively(tmp_path):
    for name in ["a.safetensors", "b.SFT", "sub/c.ckpt", "sub/deeper/d.Pt", "e.pth", "f.GGUF", "notes.txt", "g.bin"]:
        touch(tmp_path / name)
    found = discover([Root(str(tmp_path))])
    assert sorted(rel_names(found)) == ["a.safetensors", "b.SFT", "e.pth", "f.GGUF", "sub/c.ckpt", "sub/deeper/d.Pt"]
    assert found.problems == []


def test_sidecars_and_previews_are_collected(tmp_path):
    touch(tmp_path / "x.safetensors")
    touch(tmp_path / "x.json", b"{}")
    touch(tmp_path / "x.civitai.info", b"{}")
    touch(tmp_path / "x.preview.jpeg")
    touch(tmp_path / "y.safetensors")
    touch(tmp_path / "y.preview.png")  # only <stem>.preview.jpeg is a preview here
    found = discover([Root(str(tmp_path))])
    by_name = {m.rel_name: m for m in found.models}
    assert by_name["x.safetensors"].preview == str(tmp_path / "x.preview.jpeg")
    assert by_name["y.safetensors"].preview is None
    assert sorted(found.sidecars_by_dir[str(tmp_path)]) == [str(tmp_path / "x.civitai.info"), str(tmp_path / "x.json")]


def test_hidden_and_partial_downloads_are_skipped(tmp_path):
    touch(tmp_path / ".hidden.safetensors")
    touch(tmp_path / ".cache" / "z.safetensors")
    touch(tmp_path / "dl.safetensors")
    touch(tmp_path / "dl.safetensors.aria2")
    touch(tmp_path / "partial.safetensors.part")
    touch(tmp_path / "ok.safetensors")
    found = discover([Root(str(tmp_path))])
    assert list(rel_names(found)) == ["ok.safetensors"]
    assert found.skipped >= 3


def test_symlink_loop_ends_and_linked_folder_is_followed_once(tmp_path):
    touch(tmp_path / "real" / "m.safetensors")
    os.symlink(tmp_path / "real", tmp_path / "real" / "loop")
    os.symlink(tmp_path / "real", tmp_path / "link")
    found = discover([Root(str(tmp_path))])
    assert len(found.models) == 1
    assert found.problems == []


def test_broken_link_and_missing_root_are_reported_not_fatal(tmp_path):
    touch(tmp_path / "ok.safetensors")
    os.symlink(tmp_path / "gone.safetensors", tmp_path / "broken.safetensors")
    found = discover([Root(str(tmp_path)), Root(str(tmp_path / "nope"), "lora")])
    assert list(rel_names(found)) == ["ok.safetensors"]
    reasons = {Path(p.path).name: p.reason for p in found.problems}
    assert "broken" in reasons["broken.safetensors"]
    assert "does not exist" in reasons["nope"]


def test_non_utf8_file_name_is_reported(tmp_path):
    raw_dir = os.fsencode(tmp_path)
    bad = raw_dir + b"/bad\xff.safetensors"
    with open(bad, "wb") as f:
        f.write(b"x")
    touch(tmp_path / "good.safetensors")
    found = discover([Root(str(tmp_path))])
    assert list(rel_names(found)) == ["good.safetensors"]
    assert len(found.problems) == 1 and "UTF-8" in found.problems[0].reason
    found.problems[0].path.encode("utf-8")  # printable


def test_unreadable_folder_is_reported(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any folder; the scanner's permission test runs as another user")
    locked = tmp_path / "locked"
    touch(locked / "m.safetensors")
    locked.chmod(0)
    try:
        found = discover([Root(str(tmp_path))])
    finally:
        locked.chmod(0o755)
    assert found.models == [] and "cannot list folder" in found.problems[0].reason


def test_models_folder_maps_standard_subfolders_to_roles(tmp_path):
    models = tmp_path / "webui" / "models"
    touch(models / "Stable-diffusion" / "sub" / "ck.safetensors")
    touch(models / "Lora" / "l.safetensors")
    touch(models / "VAE" / "v.safetensors")
    touch(models / "custom" / "c.safetensors")
    touch(tmp_path / "webui" / "embeddings" / "e.pt")
    found = discover(roots_for(str(tmp_path / "webui")))
    assert rel_names(found) == {
        "sub/ck.safetensors": "checkpoint",
        "l.safetensors": "lora",
        "v.safetensors": "vae",
        "custom/c.safetensors": None,
        "e.pt": "embedding",
    }


def test_plain_folder_has_no_role(tmp_path):
    touch(tmp_path / "Lora-ish" / "x.safetensors")
    assert roots_for(str(tmp_path)) == [Root(str(tmp_path), None)]
