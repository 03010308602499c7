"""The Forge extension against a stand-in host (tests/support_forge_host.py) and the real central server."""
import base64
import hashlib
import io
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import gradio as gr
import model_factory
import pandas as pd
import pytest
from PIL import Image
from modelsync.extension import forge_callbacks
from modelsync.extension.host_paths import host_roots
from modelsync.extension.settings import SECTION, read_settings
from modelsync.extension.node_service import ScanState
from modelsync.extension.tab import IDLE_LABEL, TABLE_HEADERS, TabActions, progress_text
from modelsync.extension.thumbnails import THUMBNAIL_PIXELS
from modelsync.shared.scanner import ScanProgress
from support_forge_host import forge_host, run_script
from support_server import central_server  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parent.parent


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def host(tmp_path):
    forge_callbacks._service = None
    with forge_host(tmp_path, controlnet_dir=tmp_path / "webui" / "models" / "ControlNet") as host:
        yield host
        if forge_callbacks._service is not None:
            forge_callbacks._service.stop()
    forge_callbacks._service = None


def write_models(webui: Path) -> list[Path]:
    return [
        model_factory.write_lora(webui / "models" / "Lora" / "hero.safetensors", base="sdxl"),
        model_factory.write_checkpoint(webui / "models" / "Stable-diffusion" / "base.safetensors", base="sdxl"),
        model_factory.write_embedding(webui / "embeddings" / "ink.safetensors"),
    ]


def test_roots_come_from_the_host_with_roles_symlinks_resolved_and_no_duplicates(tmp_path):
    real_vae = tmp_path / "shared-vae"
    real_vae.mkdir()
    with forge_host(tmp_path, cmd_opts={"vae_dir": str(tmp_path / "vae-link")}) as host:
        os.symlink(real_vae, tmp_path / "vae-link")
        webui = Path(host.modules["modules.paths"].data_path)
        for sub in ("Stable-diffusion", "Lora", "ControlNet"):
            (webui / "models" / sub).mkdir(parents=True)
        (webui / "embeddings").mkdir()
        roots = {root.path: root.role for root in host_roots([str(real_vae)])}
    assert roots[os.path.realpath(webui / "models" / "Stable-diffusion")] == "checkpoint"
    assert roots[os.path.realpath(webui / "models" / "Lora")] == "lora"
    assert roots[os.path.realpath(webui / "embeddings")] == "embedding"
    assert roots[os.path.realpath(real_vae)] == "vae"  # the symlinked --vae-dir and the extra root are one root
    assert str(tmp_path / "vae-link") not in roots and len(roots) == len(set(roots))


def test_settings_section_and_defaults(host):
    run_script(REPO / "scripts" / "modelsync_tab.py")
    host.settings_ui()
    sections = {info.section for info in host.opts.data_labels.values()}
    assert sections == {SECTION}
    settings = read_settings()
    assert settings.push_on_startup and settings.hash_new_files and settings.rescan_minutes == 0
    assert settings.heartbeat_seconds == 60 and settings.max_hash_size_mb == 0 and settings.server_url == ""
    assert settings.effective_node_id == socket.gethostname()
    host.opts.modelsync_extra_roots = "/a\n/b"
    assert read_settings().extra_root_list == ["/a", "/b"]


def test_install_script_installs_only_what_is_missing_and_is_idempotent(host):
    host.missing = {"gguf"}
    run_script(REPO / "install.py")
    assert host.pip_calls == ['install "gguf"']
    install = run_script(REPO / "install.py")
    assert host.pip_calls == ['install "gguf"']
    assert not set(install.REQUIREMENTS) & {"gradio", "fastapi", "pydantic", "torch", "safetensors"}


def test_tab_scan_pushes_to_the_central_server(host, central_server):  # noqa: F811
    files = write_models(Path(host.modules["modules.paths"].data_path))
    run_script(REPO / "scripts" / "modelsync_tab.py")
    host.settings_ui()
    host.opts.modelsync_server_url = central_server.base_url
    host.opts.modelsync_node_id = "gpu-07"
    host.opts.modelsync_push_on_startup = False
    host.start_app(None, None)
    [(blocks, title, elem_id)] = host.tabs()
    assert isinstance(blocks, gr.Blocks) and title == "Model Sync" and elem_id == "modelsync_tab"
    components = [c.get("props", {}) for c in blocks.get_config_file()["components"]]
    assert IDLE_LABEL in [props.get("value") for props in components]
    [table] = [props for props in components if props.get("headers") == TABLE_HEADERS]
    assert table["datatype"][0] == "markdown"

    actions = TabActions(forge_callbacks.service())
    button, _progress = actions.start_scan(True)
    assert button["interactive"] is False and button["value"] == "Scanning + Calculating Hashes..."
    updates = list(actions.follow_scan())
    final_button, _, report = updates[-1]
    assert final_button["interactive"] is True and final_button["value"] == IDLE_LABEL
    assert "Scan complete! Found 3 model files" in report and "Calculated: 3 hashes" in report
    assert forge_callbacks.service().push_status.answer["added"] == 3  # pushed before the scan was reported done

    servers = central_server.get("/api/v1/servers").json()["servers"]
    assert [s["id"] for s in servers] == ["gpu-07"] and servers[0]["file_count"] == 3
    models = central_server.get("/api/v1/models", params={"limit": 10}).json()
    assert {m["sha256"] for m in models["models"]} == {sha256_of(f) for f in files}

    rows, type_choices, status = actions.refresh_table()
    assert "reachable" in status and "answered: added 3" in status
    assert {row[-1] for row in rows} == {str(f) for f in files} and {row[7] for row in rows} == {"1"}
    assert {row[4] for row in rows} == {sha256_of(f)[:10] for f in files}  # AutoV2
    assert [row[-1] for row in actions.models_table(text="hero")] == [str(files[0])]
    lora_type = next(row[2] for row in rows if row[-1] == str(files[0]))
    assert lora_type in type_choices["choices"]
    assert [row[-1] for row in actions.models_table(type_filter=lora_type)] == [str(files[0])]

    table_value = pd.DataFrame(rows, columns=TABLE_HEADERS)
    index = [row[-1] for row in rows].index(str(files[0]))
    picked = actions.select_row(gr.SelectData(None, {"index": [index, 1], "value": rows[index][1], "selected": True}), table_value)
    assert picked == str(files[0])
    details = actions.details(picked)
    assert details["model"]["hash_sha256"] == sha256_of(files[0]) and details["paths"] == [str(files[0])]
    assert details["fleet_nodes"] == 1 and details["file"]["path"] == str(files[0])
    assert {"hash_sha256", "hash_autov1", "hash_autov2", "hash_autov3", "metadata_source", "field_sources"} <= details["model"].keys()
    assert details["model"]["hash_autov2"] == sha256_of(files[0])[:10] and len(details["model"]["hash_autov3"]) == 64


def test_without_a_central_server_the_tab_works_locally_and_shows_previews(host):
    webui = Path(host.modules["modules.paths"].data_path)
    files = write_models(webui)
    Image.new("RGB", (300, 200), (10, 120, 200)).save(webui / "models" / "Lora" / "hero.preview.jpeg", "JPEG")
    run_script(REPO / "scripts" / "modelsync_tab.py")
    host.opts.modelsync_push_on_startup = False
    actions = TabActions(forge_callbacks.service())
    actions.start_scan(False)
    report = list(actions.follow_scan())[-1][2]
    assert "Scan complete! Found 3 model files" in report

    rows, _choices, status = actions.refresh_table()
    assert status == "No central server configured: local scan only."
    assert {row[7] for row in rows} == {""}  # no fleet counts without a server
    by_path = {row[-1]: row for row in rows}
    thumbnail = by_path[str(files[0])][0]
    prefix = "![preview](data:image/jpeg;base64,"
    assert thumbnail.startswith(prefix) and thumbnail.endswith(")")
    with Image.open(io.BytesIO(base64.b64decode(thumbnail[len(prefix):-1]))) as image:
        assert image.format == "JPEG" and max(image.size) == THUMBNAIL_PIXELS
    assert by_path[str(files[1])][0] == ""  # no preview file: an empty cell
    assert by_path[str(files[0])][4] == ""  # not hashed: no AutoV2


def test_app_start_returns_at_once_and_the_start_up_sync_runs_in_the_background(host, central_server):  # noqa: F811
    files = write_models(Path(host.modules["modules.paths"].data_path))
    run_script(REPO / "scripts" / "modelsync_tab.py")
    host.opts.modelsync_server_url = central_server.base_url
    host.opts.modelsync_node_id = "gpu-08"
    started = time.monotonic()
    host.start_app(None, None)  # API-only mode: demo is None
    assert time.monotonic() - started < 1
    service = forge_callbacks.service()
    assert service.start_background() is service.start_background()  # started once
    service.stop(timeout=60)  # waits for the start-up scan and push, then the thread ends
    assert not any(t.name == "modelsync-background" and t.is_alive() for t in threading.enumerate())
    assert service.push_status.attempts == 1 and service.push_status.reachable is True
    servers = central_server.get("/api/v1/servers").json()["servers"]
    assert [s["id"] for s in servers] == ["gpu-08"] and servers[0]["file_count"] == len(files)
    assert service.scan_state.report.stats.hashesCalculated == len(files)  # "hash new files" is on by default


def test_app_start_with_the_server_down_never_raises(host):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    run_script(REPO / "scripts" / "modelsync_tab.py")
    host.opts.modelsync_server_url = dead_url
    host.start_app(None, None)
    service = forge_callbacks.service()
    service.stop(timeout=60)
    assert service.push_status.attempts == 1 and service.push_status.reachable is False
    assert "unreachable" in service.status_line() and "next try at" in service.status_line()


def test_our_modules_win_over_other_extensions_top_level_packages(tmp_path):
    decoys = tmp_path / "other-extension"
    for name in ("shared", "server", "extension", "utils", "modelsync"):
        (decoys / name).mkdir(parents=True)
        (decoys / name / "__init__.py").write_text("DECOY = True\n")
    program = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})  # Forge keeps every extension's folder on sys.path...
        sys.path.insert(0, {str(decoys)!r})  # ...another extension's folder before ours
        import shared, extension, utils  # other extensions' modules, loaded first
        import modelsync  # a decoy 'modelsync' too
        from support_forge_host import forge_host, run_script
        from pathlib import Path
        with forge_host(Path({str(tmp_path)!r})) as host:
            run_script(Path({str(REPO / "scripts" / "modelsync_tab.py")!r}))
            import modelsync.extension.node_service as ns, modelsync.shared.scanner as sc
            assert ns.__file__.startswith({str(REPO)!r}), ns.__file__
            assert sc.__file__.startswith({str(REPO)!r}), sc.__file__
            assert len(host.app_started) == 1 and len(host.ui_tabs) == 1
        assert shared.DECOY and extension.DECOY and utils.DECOY
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO / "tests")
    result = subprocess.run([sys.executable, "-c", program], check=False, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_the_tab_follows_its_own_scan_while_another_one_ends(host):
    files = write_models(Path(host.modules["modules.paths"].data_path))
    run_script(REPO / "scripts" / "modelsync_tab.py")
    host.opts.modelsync_push_on_startup = False
    host.start_app(None, None)
    service = forge_callbacks.service()
    actions = TabActions(service)
    with service._busy:  # another scan or push is under way: the tab's scan waits for it
        actions.start_scan(False)
        updates = actions.follow_scan()
        button, progress, _ = next(updates)
        assert button["interactive"] is False and progress == "Starting..."
        service.scan_state = ScanState(report=None)  # what that other scan leaves when it ends
        button, _, _ = next(updates)
        assert button["interactive"] is False  # still the tab's scan to come
    *_, (button, _, report) = updates
    assert button["interactive"] is True and f"Found {len(files)} model files" in report


def test_progress_shows_files_bytes_and_eta():
    progress = ScanProgress(phase="hashing", files_done=3, files_total=10, bytes_done=3 * 1024**3,
                            bytes_total=10 * 1024**3, eta_seconds=42.4)
    assert progress_text(ScanState(running=True, progress=progress)) == \
        "hashing: 3/10 files, 3.0 GB / 10.0 GB, about 42 s left"
    assert progress_text(ScanState(running=True, progress=progress, pushing=True)).startswith("Pushing")


def test_a_model_folder_gone_at_start_up_keeps_its_files_on_the_server_and_the_tab_says_why(host, central_server):  # noqa: F811
    webui = Path(host.modules["modules.paths"].data_path)
    write_models(webui)
    run_script(REPO / "scripts" / "modelsync_tab.py")
    host.opts.modelsync_server_url = central_server.base_url
    host.opts.modelsync_node_id = "gpu-09"
    host.start_app(None, None)
    service = forge_callbacks.service()
    service.stop(timeout=60)
    (webui / "models" / "Lora").rename(webui.parent / "share-not-mounted")
    (webui / "models" / "Lora").mkdir()  # the share's mount point, nothing mounted

    forge_callbacks._service = None
    host.start_app(None, None)  # the next start of the WebUI
    service = forge_callbacks.service()
    service.stop(timeout=60)
    report = service.scan_state.report
    assert report.stats.removed == 0 and [u.files_kept for u in report.unavailable] == [1]
    node = next(s for s in central_server.get("/api/v1/servers").json()["servers"] if s["id"] == "gpu-09")
    assert (node["file_count"], node["unreachable_count"]) == (2, 1)
    shown = TabActions(service).report_markdown()
    assert "Unavailable" in shown and "Lora" in shown and "unmounted share" in shown
