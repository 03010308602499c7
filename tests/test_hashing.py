import hashlib
import os
import pickle
from pathlib import Path

import pytest

import model_factory
from modelsync.shared.scan.hashing import HashError, hash_file, hash_files


def independent(path: Path) -> dict:
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "autov1": hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8] if len(data) >= 0x200000 else None,
        "autov3": hashlib.sha256(data[8 + header_len :]).hexdigest(),
    }


@pytest.mark.parametrize("size", [0, 5 * 1024 * 1024])
def test_all_hashes_match_independent_computation(tmp_path, size):
    path = model_factory.write_padded(tmp_path / "x.safetensors", size) if size else model_factory.write_lora(tmp_path / "x.safetensors")
    h = hash_file(str(path), chunk_size=64 * 1024)  # chunks that straddle the AutoV1 window
    want = independent(path)
    assert (h.sha256, h.autov1, h.autov3) == (want["sha256"], want["autov1"], want["autov3"])
    assert h.autov2 == want["sha256"][:10] and h.sha256_12 == want["sha256"][:12]


def test_ckpt_is_hashed_but_never_unpickled(tmp_path):
    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps(Evil()) + os.urandom(3 * 1024 * 1024))
    h = hash_file(str(path))
    assert h.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert h.autov3 is None and h.autov1 is not None
    assert not marker.exists()


def test_absurd_header_length_still_hashes_without_autov3(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    h = hash_file(str(path))
    assert h.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and h.autov3 is None


def test_vanished_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        hash_file(str(tmp_path / "gone.safetensors"))


def test_file_changed_while_hashing_is_an_error(tmp_path):
    path = model_factory.write_padded(tmp_path / "g.safetensors", 4 * 1024 * 1024)

    def grow(n):
        with open(path, "ab") as f:
            f.write(b"x")

    with pytest.raises(HashError, match="changed while hashing"):
        hash_file(str(path), chunk_size=1024 * 1024, on_bytes=grow)


def test_hash_files_reports_every_outcome(tmp_path):
    good = [model_factory.write_lora(tmp_path / f"{i}.safetensors") for i in range(4)]
    missing = tmp_path / "missing.safetensors"
    seen = []
    results = hash_files([str(p) for p in [*good, missing]], workers=2, on_result=lambda p, h, e: seen.append(p))
    assert isinstance(results[str(missing)], FileNotFoundError)
    for p in good:
        assert results[str(p)].sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    assert sorted(seen) == sorted(str(p) for p in [*good, missing])
