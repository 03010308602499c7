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
from modelsync.extension import forge_callbacks
from modelsync.extension.host_paths import host_roots
from modelsync.extension.settings import CATEGORY, OPTIONS, SECTION, read_settings
from modelsync.extension.tab import (
    COLUMN,
    IDLE_LABEL,
    TABLE_HEADERS,
    TabActions,
    breakable_markdown,
    progress_text,
)
from modelsync.extension.thumbnails import THUMBNAIL_PIXELS
from modelsync.shared.node.client import NodeClient
from modelsync.shared.node.service import ScanState
from modelsync.shared.scan.scanner import ScanProgress
from PIL import Image
from support_forge_host import OptionInfoBefore17, extension_host, forge_host, run_script
from support_server import central_server  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parent.parent


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shown_file(actions: TabActions, row: list) -> str:
    """The file name of the file a table row shows."""
    return Path(actions.path_of(row)).name


@pytest.fixture
def host(tmp_path):
    with extension_host(tmp_path, controlnet_dir=tmp_path / "webui" / "models" / "ControlNet") as host:
        yield host


def write_models(webui: Path) -> list[Path]:
    return [
        model_factory.write_lora(webui / "models" / "Lora" / "hero.safetensors", base="sdxl"),
        model_factory.write_checkpoint(webui / "models" / "Stable-diffusion" / "base.safetensors", base="sdxl"),
        model_factory.write_embedding(webui / "embeddings" / "ink.safetensors"),
    ]


def started_once(host, server_url: str, node_id: str):
    """The WebUI started (API-only) with the central server set, its start-up scan and push run to the end."""
    run_script(REPO / "scripts" / "modelsync_tab.py")
    host.opts.modelsync_server_url = server_url
    host.opts.modelsync_node_id = node_id
    host.start_app(None, None)
    service = forge_callbacks.service()
    service.stop(timeout=60)
    return service


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
    infos = host.opts.data_labels.values()
    assert {info.section for info in infos} == {SECTION}
    assert {info.category_id for info in infos} == {CATEGORY}  # under "System", not "Uncategorized"
    settings = read_settings()
    assert settings.push_on_startup and settings.hash_new_files and settings.rescan_minutes == 0
    assert settings.heartbeat_seconds == 60 and settings.max_hash_size_mb == 0 and settings.server_url == ""
    assert settings.effective_node_id == socket.gethostname()
    host.opts.modelsync_extra_roots = "/a\n/b"
    assert read_settings().extra_root_list == ["/a", "/b"]


def test_settings_register_on_a_host_without_categories(host):
    host.modules["modules.shared"].OptionInfo = OptionInfoBefore17  # A1111 1.6
    run_script(REPO / "scripts" / "modelsync_tab.py")
    host.settings_ui()
    assert {info.section for info in host.opts.data_labels.values()} == {SECTION}
    assert len(host.opts.data_labels) == len(OPTIONS)


def test_calculate_hashes_starts_as_the_hash_new_files_setting(host):
    run_script(REPO / "scripts" / "modelsync_tab.py")
    host.settings_ui()
    host.opts.modelsync_push_on_startup = False

    def checkbox_value() -> bool:
        [(blocks, _title, _elem_id)] = host.tabs()
        [props] = [c["props"] for c in blocks.get_config_file()["components"] if c["props"].get("label") == "Calculate Hashes"]
        return props["value"]

    assert read_settings().hash_new_files is True and checkbox_value() is True
    assert TabActions(forge_callbacks.service()).calculate_hashes_default() is True
    host.opts.modelsync_hash_new_files = False
    assert checkbox_value() is False and TabActions(forge_callbacks.service()).calculate_hashes_default() is False


def test_install_script_installs_only_what_is_missing_and_is_idempotent(host):
    host.missing = {"gguf", "watchfiles"}
    run_script(REPO / "install.py")
    assert host.pip_calls == ['install "gguf"', 'install "watchfiles>=0.21"']
    install = run_script(REPO / "install.py")
    assert host.pip_calls == ['install "gguf"', 'install "watchfiles>=0.21"']
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
    [table] = [props for props in components if props.get("elem_id") == "modelsync_table"]
    assert table["datatype"][COLUMN["Preview"]] == "markdown" and table["headers"] == TABLE_HEADERS[:-1]

    service = forge_callbacks.service()
    actions = TabActions(service)
    button, _progress = actions.start_scan(True)
    assert button["interactive"] is False and button["value"] == "Scanning + Calculating Hashes..."
    updates = list(actions.follow_scan())
    final_button, _, report = updates[-1]
    assert final_button["interactive"] is True and final_button["value"] == IDLE_LABEL
    assert "Scan complete! Found 3 model files" in report and "Calculated: 3 hashes" in report

    actions.refresh_table()  # the local table at once; the push and the fleet counts end in the background
    *_, (table, status, report) = actions.follow_background()
    assert service.push_status.answer["added"] == 3
    assert "Pushed to the central server: added 3, updated 0, removed 0, unchanged 0." in report
    assert "reachable" in status and "Last push accepted" in status and "added 3" in status

    servers = central_server.get("/api/v1/servers").json()["servers"]
    assert [s["id"] for s in servers] == ["gpu-07"] and servers[0]["file_count"] == 3
    models = central_server.get("/api/v1/models", params={"limit": 10}).json()
    assert {m["sha256"] for m in models["models"]} == {sha256_of(f) for f in files}

    assert table["headers"] == TABLE_HEADERS[:-1]  # no file has a preview: no Preview column
    rows = {shown_file(actions, row): row for row in table["data"]}
    assert set(rows) == {f.name for f in files}
    assert {row[COLUMN["Fleet"]] for row in rows.values()} == {"1"}
    assert {row[COLUMN["AutoV2"]] for row in rows.values()} == {sha256_of(f)[:10] for f in files}
    assert {row[COLUMN["State"]] for row in rows.values()} == {"ok"}
    assert rows["hero.safetensors"][COLUMN["Type"]] == "lora" and rows["hero.safetensors"][COLUMN["Folder"]] == "lora"
    assert rows["ink.safetensors"][COLUMN["Folder"]] == "embedding"
    assert [shown_file(actions, row) for row in actions.models_table(text="hero")["data"]] == ["hero.safetensors"]
    _table, type_choices, _status = actions.refresh_table()
    assert "lora" in type_choices["choices"]
    assert [shown_file(actions, row) for row in actions.models_table(type_filter="lora")["data"]] == ["hero.safetensors"]

    table_value = pd.DataFrame(table["data"], columns=table["headers"])
    index = [shown_file(actions, row) for row in table["data"]].index("hero.safetensors")
    picked = actions.select_row(gr.SelectData(None, {"index": [index, 1], "value": table["data"][index][1], "selected": True}),
                                table_value)
    assert picked == str(files[0])
    details = actions.details(picked)
    assert details["sha256"] == sha256_of(files[0]) and details["copies"] == [str(files[0])]
    assert details["fleet_nodes"] == 1 and details["path"] == str(files[0]) and details["state"] == "ok"
    assert details["autov2"] == sha256_of(files[0])[:10] and len(details["autov3"]) == 64
    assert (details["type"], details["role"]) == ("lora", "lora") and details["fields"]["base"]["value"] == "sdxl"


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

    table, _choices, status = actions.refresh_table()
    assert status == "No central server configured: local scan only."
    assert table["headers"] == TABLE_HEADERS  # one file has a preview: the Preview column is there
    assert {row[COLUMN["Fleet"]] for row in table["data"]} == {""}  # no fleet counts without a server
    by_file = {shown_file(actions, row): row for row in table["data"]}
    thumbnail = by_file[files[0].name][COLUMN["Preview"]]
    prefix = "![preview](data:image/jpeg;base64,"
    assert thumbnail.startswith(prefix) and thumbnail.endswith(")")
    with Image.open(io.BytesIO(base64.b64decode(thumbnail[len(prefix):-1]))) as image:
        assert image.format == "JPEG" and max(image.size) == THUMBNAIL_PIXELS
    assert by_file[files[1].name][COLUMN["Preview"]] == ""  # no preview file: an empty cell
    assert by_file[files[0].name][COLUMN["AutoV2"]] == ""  # not hashed: no AutoV2
    assert list(actions.follow_background())[-1][1] == status  # nothing to wait for without a server

    (webui / "models" / "Lora" / "hero.preview.jpeg").unlink()
    table, _choices, _status = actions.refresh_table()
    assert table["headers"] == TABLE_HEADERS[:-1]  # no file has a preview: the column takes no width
    assert all(len(row) == len(TABLE_HEADERS) - 1 for row in table["data"])


def test_app_start_returns_at_once_and_the_start_up_sync_runs_in_the_background(host, central_server,  # noqa: F811
                                                                               monkeypatch):
    files = write_models(Path(host.modules["modules.paths"].data_path))
    start_returned = threading.Event()
    released: list[bool] = []  # per push: whether app start had returned before it went (a start that waited never would)
    push_inventory = NodeClient.push_inventory

    def push_once_start_returned(client, inventory):
        released.append(start_returned.wait(30))
        return push_inventory(client, inventory)

    monkeypatch.setattr(NodeClient, "push_inventory", push_once_start_returned)
    run_script(REPO / "scripts" / "modelsync_tab.py")
    host.opts.modelsync_server_url = central_server.base_url
    host.opts.modelsync_node_id = "gpu-08"
    started = time.monotonic()
    host.start_app(None, None)  # API-only mode: demo is None
    assert time.monotonic() - started < 25  # a start that waited for its push would wait the push's 30 s
    start_returned.set()
    service = forge_callbacks.service()
    assert service.start_background() is service.start_background()  # started once
    service.stop(timeout=60)  # waits for the start-up scan and push, then the thread ends
    assert not any(t.name == "modelsync-background" and t.is_alive() for t in threading.enumerate())
    assert service.push_status.attempts == 1 and service.push_status.reachable is True and released == [True]
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
    status = service.status_line()
    assert status.startswith(f"Central server {dead_url}: unreachable. Nothing listens at {dead_url}/ (connection refused): "
                             "is `modelsync serve` running there, on that port?")
    assert "The push failed 1 time in a row; the inventory is kept, next try in 5 s (at " in status
    assert not any(raw in status for raw in ("HTTPConnectionPool", "Max retries", "Errno", "NewConnectionError"))


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
        from support_forge_host import OptionInfoBefore17, forge_host, run_script
        from pathlib import Path
        with forge_host(Path({str(tmp_path)!r})) as host:
            run_script(Path({str(REPO / "scripts" / "modelsync_tab.py")!r}))
            import modelsync.extension.node_service as ns, modelsync.shared.scan.scanner as sc
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
    with service._scan_lock:  # another scan is under way: the tab's scan waits for it
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


def test_a_model_folder_gone_at_start_up_keeps_its_files_on_the_server_and_the_tab_says_why(host, central_server):  # noqa: F811
    webui = Path(host.modules["modules.paths"].data_path)
    write_models(webui)
    started_once(host, central_server.base_url, "gpu-09")
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

    actions = TabActions(service)
    table, _choices, _status = actions.refresh_table()
    [row] = [row for row in table["data"] if row[COLUMN["State"]] != "ok"]
    assert shown_file(actions, row) == "hero.safetensors" and row[COLUMN["Folder"]] == "lora"
    assert row[COLUMN["State"]].startswith("unreachable: ") and "unmounted share" in row[COLUMN["State"]]
    assert row[COLUMN["AutoV2"]]  # kept with its hashes


def test_the_table_shows_the_content_type_the_folder_and_why_a_file_is_not_offered(host):
    webui = Path(host.modules["modules.paths"].data_path)
    lora = model_factory.write_lora(webui / "models" / "Lora" / "hero.safetensors", base="sdxl")
    (webui / "models" / "Lora" / "half.safetensors").write_bytes(lora.read_bytes()[: lora.stat().st_size // 2])
    (webui / "models" / "Lora" / "garbage.ckpt").write_bytes(b"not a model at all " * 100)
    model_factory.write_lora(webui / "models" / "VAE" / "misplaced.safetensors")  # a LoRA in the VAE folder
    run_script(REPO / "scripts" / "modelsync_tab.py")
    host.opts.modelsync_push_on_startup = False
    actions = TabActions(forge_callbacks.service())
    actions.start_scan(True)
    list(actions.follow_scan())

    table, choices, _status = actions.refresh_table()
    rows = {shown_file(actions, row): row for row in table["data"]}
    shown = {name: (row[COLUMN["Type"]], row[COLUMN["Folder"]], row[COLUMN["State"]].split(":")[0]) for name, row in rows.items()}
    assert shown == {"hero.safetensors": ("lora", "lora", "ok"), "misplaced.safetensors": ("lora", "vae", "ok"),
                     "half.safetensors": ("unknown", "lora", "broken"), "garbage.ckpt": ("unknown", "lora", "broken")}
    assert "truncated" in rows["half.safetensors"][COLUMN["State"]]  # the reason, as the scanner gave it
    assert [shown_file(actions, row) for row in table["data"]][:2] == ["garbage.ckpt", "half.safetensors"]  # what is wrong first
    assert choices["choices"] == ["All", "lora", "unknown"]
    assert {shown_file(actions, row) for row in actions.models_table(text="broken")["data"]} == {"garbage.ckpt", "half.safetensors"}
    details = actions.details(str(webui / "models" / "Lora" / "half.safetensors"))
    assert details["state"] == "broken" and "truncated" in details["problem"] and details["sha256"] is None


def test_layout_names_wrap_between_words_short_cells_never_and_the_button_changes_its_label_at_once(host):
    assert breakable_markdown("storybook_flux-v2.safetensors") == r"storybook\_<wbr>flux-<wbr>v2.<wbr>safetensors"
    assert breakable_markdown("sub/a*b[1]<x>") == r"sub/<wbr>a\*b\[1\]\<x\>"  # shown as written, not as markdown
    run_script(REPO / "scripts" / "modelsync_tab.py")
    [(blocks, _title, _elem_id)] = host.tabs()
    config = blocks.get_config_file()
    by_id = {c["id"]: c.get("props", {}) for c in config["components"]}
    [style] = [p["value"] for p in by_id.values() if p.get("elem_id") == "modelsync_css"]
    autov2, fleet = COLUMN["AutoV2"] + 1, COLUMN["Fleet"] + 1  # CSS counts columns from 1
    assert f"td:nth-child(n+2):nth-child(-n+{fleet})" in style and 2 <= autov2 <= fleet and "white-space: nowrap" in style
    [button_id] = [i for i, p in by_id.items() if p.get("value") == IDLE_LABEL]
    [click] = [d for d in config["dependencies"] if button_id in d["outputs"] and d.get("trigger_after") is None]
    assert click["queue"] is False  # the server's answer comes in one request, not after a turn in the queue
    assert '"Scanning + Calculating Hashes..."' in click["js"] and 'getElementById("modelsync_scan")' in click["js"]
    assert by_id[button_id]["elem_id"] == "modelsync_scan"  # the label changes in the browser before any request


def test_the_start_up_push_sends_the_local_previews_the_server_asks_for(host, central_server):  # noqa: F811
    webui = Path(host.modules["modules.paths"].data_path)
    files = write_models(webui)
    Image.new("RGB", (300, 200), (10, 120, 200)).save(webui / "models" / "Lora" / "hero.preview.jpeg", "JPEG")
    service = started_once(host, central_server.base_url, "gpu-10")
    assert service.push_status.previews_sent == [str(webui / "models" / "Lora" / "hero.preview.jpeg")]
    model = central_server.get("/api/v1/models", params={"text": sha256_of(files[0])}).json()["models"][0]
    preview = central_server.get(model["preview_url"])
    assert preview.status_code == 200 and Image.open(io.BytesIO(preview.content)).size == (300, 200)
