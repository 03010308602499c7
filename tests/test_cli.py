import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import model_factory
from support_server import central_server  # noqa: F401  (pytest fixture)

MODELSYNC = shutil.which("modelsync") or ""


def run(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [MODELSYNC] if MODELSYNC else [sys.executable, "-m", "modelsync.cli.main"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)


def test_hash_prints_every_hash(tmp_path):
    small = model_factory.write_lora(tmp_path / "small.safetensors", base="sd1")
    big = model_factory.write_padded(tmp_path / "big.safetensors", 3 * 1024 * 1024)
    out = run("hash", "--json", str(small), str(big), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    results = {Path(r["path"]).name: r for r in json.loads(out.stdout)}
    for path in (small, big):
        data = path.read_bytes()
        r = results[path.name]
        assert r["sha256"] == hashlib.sha256(data).hexdigest()
        assert r["autov2"] == r["sha256"][:10]
        header_len = int.from_bytes(data[:8], "little")
        assert r["autov3"] == hashlib.sha256(data[8 + header_len :]).hexdigest()
    assert results["small.safetensors"]["autov1"] is None
    assert results["big.safetensors"]["autov1"] == hashlib.sha256(big.read_bytes()[0x100000:0x110000]).hexdigest()[:8]


def test_hash_of_missing_file_fails_clearly(tmp_path):
    out = run("hash", str(tmp_path / "nope.safetensors"), cwd=tmp_path)
    assert out.returncode == 1 and "nope.safetensors" in out.stderr


def test_scan_json_on_a_models_folder_and_rescan(tmp_path):
    models = tmp_path / "webui" / "models"
    model_factory.write_checkpoint(models / "Stable-diffusion" / "a.safetensors", base="sd1")
    model_factory.write_lora(models / "Lora" / "sub" / "b.safetensors", base="sdxl")
    env = {"CONFIG_DATA_PATH": str(tmp_path / "data")}
    out = run("scan", str(models), "--hash", "--json", "--server-id", "gpu-01", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert (result["total"], result["added"], result["hashesCalculated"], result["errors"]) == (2, 2, 2, 0)
    assert result["message"].startswith("Scan complete! Found 2 model files")
    assert (tmp_path / "data" / "catalog.db").exists()
    again = json.loads(run("scan", str(models), "--hash", "--json", "--server-id", "gpu-01", cwd=tmp_path, env=env).stdout)
    assert (again["added"], again["updated"], again["hashesCalculated"]) == (0, 0, 0)


def test_scan_text_output_lists_problems(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "broken.safetensors").write_bytes(b"\x01")
    out = run("scan", str(tmp_path / "m"), "--role", f"lora={tmp_path / 'm'}", "--data", str(tmp_path / "d"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Scan complete! Found 1 model files" in out.stdout
    assert "broken.safetensors" in out.stdout


def test_bad_role_is_a_usage_error(tmp_path):
    out = run("scan", "--role", "nonsense=/x", cwd=tmp_path)
    assert out.returncode == 2 and "KIND=DIR" in out.stderr


def test_scan_on_a_terminal_shows_a_progress_bar(tmp_path):
    import pty

    model_factory.write_padded(tmp_path / "m" / "big.safetensors", 9 * 1024 * 1024)
    command = [MODELSYNC] if MODELSYNC else [sys.executable, "-m", "modelsync.cli.main"]
    pid, fd = pty.fork()
    if pid == 0:
        import fcntl
        import struct
        import termios

        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))  # a terminal 120 columns wide
        os.execvpe(command[0], [*command, "scan", str(tmp_path / "m"), "--hash", "--data", str(tmp_path / "d")], os.environ)
    output = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    os.waitpid(pid, 0)
    text = output.decode(errors="replace")
    assert "hashing" in text and "100%" in text and "1/1 files" in text
    assert "Scan complete! Found 1 model files" in text


def test_scan_pushes_to_the_central_server_and_keeps_its_token(tmp_path, central_server):
    model_factory.write_lora(tmp_path / "m" / "Lora" / "x.safetensors", base="sd1")
    model_factory.write_checkpoint(tmp_path / "m" / "Stable-diffusion" / "c.safetensors", base="sdxl")
    args = ("scan", str(tmp_path / "m"), "--hash", "--json", "--push", central_server.base_url, "--server-id", "cli-node",
            "--data", str(tmp_path / "d"))
    env = {"MODELSYNC_TOKEN": ""}
    first = run(*args, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    push = json.loads(first.stdout)["push"]
    assert push["added"] == 2 and push["registered"] is True
    again = run(*args, cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)["push"]
    assert second["added"] == 0 and not second.get("registered")  # the stored token was used
    nodes = {n["id"]: n for n in central_server.get("/api/v1/servers").json()["servers"]}
    assert nodes["cli-node"]["model_count"] == 2
