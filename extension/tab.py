"""The "Model Sync" tab. Uses only gradio APIs present in both 3.41 (A1111) and 4.40 (Forge).

Nothing a control calls waits for the central server: the scan's report and the local table show as soon as the
files are read; the push and the fleet counts go on in the background, and `follow_background` brings their
outcome to the page when they end."""
from __future__ import annotations

import inspect
import json
import re
import time
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

import gradio as gr

from ..shared.catalog import migrate, open_catalog
from ..shared.catalog_view import FileFilter, FileRecord, find, list_files
from ..shared.node.service import ScanState
from ..shared.units import human_size
from .insight_client import NodeInsight
from .node_service import NodeService
from .thumbnails import thumbnail_markdown

# Preview last: when no file has one, the column is left out (a table value carries its own headers) and the
# other columns keep their places and types.
TABLE_HEADERS = ["Name", "Type", "Folder", "Base", "AutoV2", "Size", "Metadata", "Fleet", "State", "Preview"]
TABLE_TYPES = ["markdown"] + ["str"] * (len(TABLE_HEADERS) - 2) + ["markdown"]
COLUMN = {name: i for i, name in enumerate(TABLE_HEADERS)}
UNKNOWN_TYPE = "unknown"  # a file whose bytes say no type
ALL_TYPES = "All"
POLL_SECONDS = 0.5
TRANSFER_HEADERS = ["File", "State", "Progress", "Speed", "ETA", "Source", "Reason"]
TRANSFERS_POLL_SECONDS = 1.0  # the node reports progress about once a second
TRANSFERS_FOLLOW_SECONDS = 30 * 60  # the tab follows active transfers this long; Refresh follows again
ACTIVE_STATES = ("queued", "running", "waiting_source", "verifying")
RECOMMENDATION_HEADERS = ["Advice", "Model", "Size", "Why", "From"]
ORDER_SLOTS = 8  # buttons made in build_tab (gradio adds no component at run time); more places: the dashboard
INSIGHTS_PAGE = "/dashboard/insights"
UPDATE_BADGE = "**update available**"
IDLE_LABEL = "Scan for New Models"
# Short cells never wrap; a name wraps only after "_", "-", "." or "/" (<wbr> in its markdown); the state's reason
# wraps anywhere it must. (A <style> in an HTML component: both gradio versions apply it to the page; a sub-Blocks'
# css= is ignored.)
TABLE_CSS = """
#modelsync_table td, #modelsync_table th, #modelsync_transfers td, #modelsync_transfers th,
#modelsync_recommendations td, #modelsync_recommendations th { font-family: var(--font) !important; }
#modelsync_transfers td:nth-child(n+2):nth-child(-n+6) { white-space: nowrap !important; }
#modelsync_table td { word-break: normal !important; overflow-wrap: normal !important; hyphens: none !important; }
#modelsync_table td:nth-child(5) { font-family: var(--font-mono) !important; font-size: 0.9em; }
#modelsync_table td:nth-child(n+2):nth-child(-n+8) { white-space: nowrap !important; }
#modelsync_table td:nth-child(1) { min-width: 12em; }
#modelsync_table td:nth-child(1) small { opacity: 0.75; }
#modelsync_table td:nth-child(9) { overflow-wrap: anywhere !important; min-width: 8em; }
#modelsync_table td:nth-child(10) img { max-width: 64px; max-height: 64px; }
#modelsync_css { display: none; }
"""
# Runs in the browser on the click, before the request: the button shows its new label at once (a request takes
# 0.2-0.5 s on a busy node). It edits the label's text node, which gradio's own update then sets again.
SCAN_CLICK_JS = """(calculate) => {
  const button = document.getElementById("modelsync_scan");
  if (button) {
    const walker = document.createTreeWalker(button, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      if (node.data.trim()) { node.data = calculate ? %s : %s; break; }
    }
    button.disabled = true;
  }
  return calculate;
}"""
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+!|~])")
_NAME_BREAKS = re.compile(r"([_\-./])")


def progress_text(state: ScanState) -> str:
    progress = state.progress
    if progress is None:
        return "Starting..."
    eta = f", about {progress.eta_seconds:.0f} s left" if progress.eta_seconds is not None else ""
    return (
        f"{progress.phase}: {progress.files_done}/{progress.files_total} files, "
        f"{human_size(progress.bytes_done)} / {human_size(progress.bytes_total)}{eta}"
    )


def state_text(record: FileRecord) -> str:
    """"ok", or the state with its reason: why a file is not offered to jobs (or was not fully read)."""
    if record.state == "ok":
        return f"ok; {record.problem}" if record.problem else "ok"
    return f"{record.state}: {record.problem}" if record.problem else record.state


def breakable_markdown(text: str) -> str:
    """`text` as markdown that shows it as it is and may wrap after "_", "-", "." and "/", never inside a word
    (copying it gives the text back: <wbr> is no character)."""
    return _NAME_BREAKS.sub(r"\1<wbr>", _MARKDOWN_SPECIAL.sub(r"\\\1", text))


def name_cell(record: FileRecord) -> str:
    """The model's name, with the file's relative name under it when that says more."""
    rel_name = record.rel_name
    if not record.name or record.name in (rel_name, PurePosixPath(rel_name).stem):
        return breakable_markdown(rel_name)
    return f"{breakable_markdown(record.name)}<br><small>{breakable_markdown(rel_name)}</small>"


def transfer_row(transfer: dict[str, Any], names: dict[str, str]) -> list[str]:
    """One of this node's transfers as the tab shows it: what (the file it became; else the name it gets here; else
    the start of its SHA256), where it stands, how fast, from where, and why not. `names`: SHA256 -> file name."""
    sha256 = str(transfer.get("sha256") or "")
    dest = transfer.get("dest_path") or names.get(sha256)
    name = PurePosixPath(str(dest).replace("\\", "/")).name if dest else sha256[:10]
    done, size = int(transfer.get("bytes_done") or 0), transfer.get("size")
    if isinstance(size, int) and size > 0:
        progress = f"{100 * done / size:.0f}% ({human_size(done)} / {human_size(size)})"
    else:
        progress = human_size(done) if done else ""
    state = str(transfer.get("state") or "")
    speed, eta = transfer.get("speed_bps"), transfer.get("eta_seconds")
    running = state == "running"
    source = source_text(transfer.get("source") or {})
    reason = transfer.get("reason") or ""
    if transfer.get("error"):
        reason = f"{reason}: {transfer['error']}" if reason else str(transfer["error"])
    return [name, state.replace("_", " "), progress, f"{human_size(speed)}/s" if running and speed else "",
            f"{eta:.0f} s" if running and isinstance(eta, (int, float)) else "", str(source), reason]


def source_text(source: dict[str, Any]) -> str:
    """Where a transfer's bytes come from: the peer node's id, the Civitai model and version, or the URL's host/path."""
    kind = source.get("kind") or "peer"
    if kind == "civitai":
        civitai = source.get("civitai") or {}
        names = " / ".join(str(civitai[k]) for k in ("model_name", "version_name") if civitai.get(k))
        return f"Civitai: {names}" if names else f"Civitai version {civitai.get('version_id') or ''}".rstrip()
    if kind == "url":
        url = str(source.get("url") or "")
        return url.split("://", 1)[-1] if url else "URL"
    return str(source.get("server_id") or "")


def recommendation_source(source: dict[str, Any]) -> str:
    kind = source.get("kind")
    if kind == "peer":
        return f"node {source.get('server_id')}"
    if kind == "civitai":
        names = " / ".join(str(source[k]) for k in ("model_name", "version_name") if source.get(k))
        return f"Civitai {names or 'version ' + str(source.get('version_id'))}"
    return "no source now"


def model_label(model: dict[str, Any]) -> str:
    return str(model.get("name") or model.get("filename") or str(model.get("sha256") or "")[:10])


class TabActions:
    """What the tab's controls call; plain functions of the node service so tests drive the same code."""

    def __init__(self, service: NodeService):
        self.service = service
        self.rows: list[FileRecord] = []  # the node's files from its catalog, read by refresh_table
        self.insight = NodeInsight(service)

    @property
    def counts(self) -> dict[str, int] | None:
        """Fleet node counts by SHA256, as last read from the central server (None: not known)."""
        return self.service.fleet

    def calculate_hashes_default(self) -> bool:
        """"Calculate Hashes" starts as the setting "Hash new files automatically" says: one default for both."""
        return self.service.settings().hash_new_files

    def scanning_label(self, calculate_hashes: bool) -> str:
        return "Scanning + Calculating Hashes..." if calculate_hashes else "Scanning..."

    def scan_click_js(self) -> str:
        return SCAN_CLICK_JS % (json.dumps(self.scanning_label(True)), json.dumps(self.scanning_label(False)))

    def start_scan(self, calculate_hashes: bool) -> tuple[dict[str, Any], str]:
        """The button: start a scan (or follow the one running) and disable the button."""
        self.service.start_scan(bool(calculate_hashes))
        running = self.service.scan_state
        return gr.update(value=self.scanning_label(running.calculate_hashes), interactive=False), progress_text(running)

    def follow_scan(self) -> Iterator[tuple[dict[str, Any], str, str]]:
        """Yields (button, progress, report) until the tab's scan has read the files, then the report at once (the
        push goes on in the background) and the button for the next scan."""
        while self.service.tab_scan_running():
            state = self.service.scan_state
            yield gr.update(value=self.scanning_label(state.calculate_hashes), interactive=False), progress_text(state), ""
            time.sleep(POLL_SECONDS)
        yield gr.update(value=IDLE_LABEL, interactive=True), "", self.report_markdown()

    def report_markdown(self) -> str:
        state = self.service.scan_state
        if state.error:
            return f"**Scan failed:** {state.error}"
        report = state.report
        if report is None:
            return ""
        parts = ["```\n" + report.message + "\n```"]
        push = self.push_markdown()
        if push:
            parts.append(push)
        if report.problems:
            parts.append("**Errors**\n" + "\n".join(f"- `{p.path}`: {p.reason}" for p in report.problems))
        if report.duplicates:
            parts.append(
                "**Duplicates**\n" + "\n".join(f"- {d.sha256[:10]}: " + ", ".join(f"`{p}`" for p in d.paths) for d in report.duplicates)
            )
        written = self.service.push_status.previews_written
        if written:
            parts.append("**Previews written**\n" + "\n".join(f"- `{path}`" for path in written))
        return "\n\n".join(parts)

    def push_markdown(self) -> str:
        """How the push of the last scan went: under way, failed (why, and when it is tried again) or taken."""
        service, status = self.service, self.service.push_status
        if not service.settings().server.url:
            return ""
        if service.tab_push_running() or status.pushing:
            return "Pushing the inventory to the central server in the background..."
        if service.push_waiting:
            return f"**The push failed:** {service.status_line()}"
        if status.last_push is not None:
            answer = status.answer
            return (f"Pushed to the central server: added {answer.get('added', 0)}, updated {answer.get('updated', 0)}, "
                    f"removed {answer.get('removed', 0)}, unchanged {answer.get('unchanged', 0)}.")
        return ""

    def _local_rows(self) -> list[FileRecord]:
        if not self.service.catalog_path.is_file():
            return []
        db = open_catalog(self.service.catalog_path)
        try:
            migrate(db)
            records = list_files(db, self.service.settings().effective_node_id, FileFilter())
        finally:
            db.close()
        return sorted(records, key=lambda r: (r.state == "ok", r.rel_name.lower(), r.path))  # what is wrong first

    @staticmethod
    def _type_of(record: FileRecord) -> str:
        return record.type or UNKNOWN_TYPE

    def models_table(self, type_filter: str = ALL_TYPES, text: str = "") -> dict[str, Any]:
        """The filter controls: the node's files of that content type whose name, file, hash or state contains
        `text` (filtered in memory: the catalog is read by refresh_table). A table value with its headers: the
        Preview column only when some file has a preview."""
        needle = (text or "").strip().lower()
        counts = self.counts
        rows = []
        for r in self.rows:
            if type_filter and type_filter != ALL_TYPES and self._type_of(r) != type_filter:
                continue
            if needle and needle not in f"{r.name or ''} {r.rel_name} {r.sha256 or ''} {state_text(r)}".lower():
                continue
            fleet = str(counts.get(r.sha256, 0)) if counts is not None and r.sha256 else ""
            name = name_cell(r) + (f"<br>{UPDATE_BADGE}" if r.sha256 in self.insight.updates else "")
            rows.append([name, self._type_of(r), r.role or "", r.base or "", r.autov2 or "", human_size(r.size),
                         r.metadata_source or "", fleet, state_text(r), thumbnail_markdown(r.path)])
        headers = TABLE_HEADERS if any(row[-1] for row in rows) else TABLE_HEADERS[:-1]
        return {"headers": headers, "data": [row[: len(headers)] for row in rows] or [[]]}  # [[]]: gradio's empty table

    def refresh_table(self, type_filter: str = ALL_TYPES, text: str = "") -> tuple[dict[str, Any], dict[str, Any], str]:
        """Tab load, the Refresh button and the end of a scan: (table, type choices, status line) from the node's
        own catalog at once, with the fleet counts last read; a new read of them starts in the background
        (`follow_background` shows it)."""
        self.service.read_fleet_counts()
        self.rows = self._local_rows()
        types = [ALL_TYPES] + sorted({self._type_of(r) for r in self.rows})
        return self.models_table(type_filter, text), gr.update(choices=types), self.service.status_line()

    def follow_background(self, type_filter: str = ALL_TYPES, text: str = "") -> Iterator[tuple[Any, str, Any]]:
        """After refresh_table: yields (table, status line, report) while the tab's push or a read of the fleet
        counts is under way (the status line only), then the table with the counts, the status line and the
        report with the push's outcome. The counts are read again when a push ended since their last read."""
        while True:
            if self.service.tab_push_running() or self.service.reading_fleet_counts():
                yield gr.update(), self.service.status_line(), gr.update()
                time.sleep(POLL_SECONDS)
            elif self.service.settings().server.url and self.service.fleet_counts_stale():
                self.service.read_fleet_counts()
            else:
                break
        yield self.models_table(type_filter, text), self.service.status_line(), self.report_markdown()

    def transfers_table(self) -> dict[str, Any]:
        transfers = self.service.node_transfers or []
        names = {r.sha256: r.rel_name for r in self.rows if r.sha256}
        names.update({t.order.sha256: t.order.rel_name for t in list(self.service.transfers.running.values())})
        return {"headers": TRANSFER_HEADERS, "data": [transfer_row(t, names) for t in transfers] or [[]]}

    def transfers_note(self) -> str:
        """What the transfers table is: none, a read that failed, or how many of how many are under way."""
        service = self.service
        if not service.settings().server.url:
            return "Transfers: no central server configured."
        if service.transfers_error:
            return f"Transfers could not be read: {service.transfers_error}"
        transfers = service.node_transfers
        if transfers is None:
            return "Reading this node's transfers..."
        if not transfers:
            return "No transfers to this node."
        active = sum(t.get("state") in ACTIVE_STATES for t in transfers)
        return f"This node's {len(transfers)} latest transfers, {active} under way."

    def transfers_active(self) -> bool:
        """Under way as the server said last, or as this node runs them now (an order just taken)."""
        shown = any(t.get("state") in ACTIVE_STATES for t in self.service.node_transfers or [])
        return shown or bool(self.service.transfers.running)

    def follow_transfers(self) -> Iterator[tuple[dict[str, Any], str]]:
        """Yields (transfers table, note): read in the background, then again about every second while a transfer
        is under way (for at most TRANSFERS_FOLLOW_SECONDS)."""
        if not self.service.settings().server.url:
            yield self.transfers_table(), self.transfers_note()
            return
        deadline = time.monotonic() + TRANSFERS_FOLLOW_SECONDS
        while True:
            self.service.read_node_transfers()
            while self.service.reading_node_transfers():
                time.sleep(POLL_SECONDS / 5)
            yield self.transfers_table(), self.transfers_note()
            if not self.transfers_active() or time.monotonic() >= deadline:
                return
            time.sleep(TRANSFERS_POLL_SECONDS)

    # what the central server advises

    def recommendations_table(self) -> dict[str, Any]:
        rec = self.insight.recommendations or {}
        rows = [["place", model_label(p["model"]), human_size(p["model"].get("size")), p["reason"],
                 recommendation_source(p["source"]) + (f" (transfer {p['transfer']['state']})" if p.get("transfer") else "")]
                for p in rec.get("place", [])]
        rows += [["drop", model_label(d["model"]), human_size(d["bytes"]), d["reason"], ""] for d in rec.get("drop", [])]
        # an empty row as wide as the headers: gradio 4.40 draws `[[]]` here 500 px high, at times without the first header
        return {"headers": RECOMMENDATION_HEADERS, "data": rows or [[""] * len(RECOMMENDATION_HEADERS)]}

    def orderable(self) -> dict[str, tuple[int, str]]:
        """Order button label -> (model id, "<model> from <source>" for the order's note): the places with a source
        and no transfer yet (a place under way shows its transfer in the table). Two models of the same name and
        source: the second label adds its SHA256's start."""
        rec = self.insight.recommendations or {}
        labels: dict[str, tuple[int, str]] = {}
        for place in rec.get("place", []):
            if place.get("transfer") or place["source"].get("kind") == "none":
                continue
            model = place["model"]
            name = f"{model_label(model)} from {recommendation_source(place['source'])}"
            label = f"Copy {model_label(model)} here from {recommendation_source(place['source'])}"
            if label in labels:
                label += f" ({str(model.get('sha256') or model['id'])[:10]})"
            labels[label] = (model["id"], name)
        return labels

    def recommendations_note(self, reading: bool = False) -> str:
        service, insight = self.service, self.insight
        if not service.settings().server.url:
            return "Recommendations: no central server configured."
        if insight.error:
            return f"Recommendations could not be read: {insight.error}"
        rec = insight.recommendations
        if reading or insight.busy() or rec is None:
            return "Reading this node's recommendations..."
        parts = [f"{len(rec['place'])} model(s) to place here, {len(rec['drop'])} this node could drop."]
        if not rec["disk_known"]:
            parts.append("This node has not reported its free disk yet: nothing is placed on it.")
        if not service.settings().allow_transfers:
            parts.append("Transfers to this node are off (Settings > Model Sync): no copy can be ordered.")
        beyond = len(self.orderable()) - ORDER_SLOTS
        if beyond > 0:
            parts.append(f"{beyond} more to place than the buttons below show: the dashboard's Insights page "
                         f"({INSIGHTS_PAGE} on the central server) orders them.")
        return " ".join(parts)

    def order_buttons(self) -> list[dict[str, Any]]:
        """One update per button slot: the first ones name an orderable place, the rest are hidden. Clickable only
        while this node takes transfers and no read or order of the advice is under way."""
        labels = list(self.orderable())[:ORDER_SLOTS]
        allowed = self.service.settings().allow_transfers and not self.insight.busy()
        return [gr.update(value=labels[slot] if slot < len(labels) else "", visible=slot < len(labels),
                          interactive=allowed) for slot in range(ORDER_SLOTS)]

    def insight_outputs(self, type_filter: str = ALL_TYPES, text: str = "", reading: bool = False) -> tuple[Any, ...]:
        """(recommendations table, note, ORDER_SLOTS button updates..., models table, order note)."""
        return (self.recommendations_table(), self.recommendations_note(reading), *self.order_buttons(),
                self.models_table(type_filter, text), self.insight.order_note)

    def _wait_for_insight(self, type_filter: str, text: str) -> Iterator[tuple[Any, ...]]:
        """The tab's parts at once ("Reading..."), then again when the background read or order has ended (the
        worker waits at most the client's timeouts: 2 x 4 s, plus the order's)."""
        yield self.insight_outputs(type_filter, text, reading=True)
        while self.insight.busy():
            time.sleep(POLL_SECONDS / 5)
        yield self.insight_outputs(type_filter, text)

    def follow_insight(self, type_filter: str = ALL_TYPES, text: str = "") -> Iterator[tuple[Any, ...]]:
        """Tab load and Refresh: read the recommendations and the update badges in the background; yield the tab's
        parts while reading and once read. An earlier order's note goes."""
        self.insight.order_note = ""
        yield from self._read_insight(type_filter, text)

    def after_order(self, type_filter: str = ALL_TYPES, text: str = "") -> Iterator[tuple[Any, ...]]:
        """Once an order's copies ended: the advice read again. The note goes only when the order made a transfer
        (the advice shows where it is now); a note saying why nothing was ordered stays."""
        if self.insight.order_placed:
            self.insight.order_note = ""
        yield from self._read_insight(type_filter, text)

    def _read_insight(self, type_filter: str, text: str) -> Iterator[tuple[Any, ...]]:
        if not self.service.settings().server.url:
            yield self.insight_outputs(type_filter, text)
            return
        self.insight.read()
        yield from self._wait_for_insight(type_filter, text)

    def order_recommended(self, choice: str | None, type_filter: str = ALL_TYPES, text: str = "") -> Iterator[tuple[Any, ...]]:
        """A place's button (its label is the input): order that place through the transfer API (only when this node
        takes transfers)."""
        place = self.orderable().get(choice or "")
        self.insight.order_placed = False
        if not self.service.settings().allow_transfers:
            self.insight.order_note = "Transfers to this node are off (Settings > Model Sync)."
        elif place is None:
            self.insight.order_note = f"Not ordered: \"{choice}\" is no longer among the places to order."
        else:
            self.insight.order(*place)
            yield from self._wait_for_insight(type_filter, text)
            return
        yield self.insight_outputs(type_filter, text)
        if self.insight.busy():  # a read for another browser: the buttons come back when it ends
            yield from self._wait_for_insight(type_filter, text)

    def path_of(self, row: list[Any]) -> str:
        """The path of the file a table row shows (found by its Name and Folder cells); "" when none."""
        if len(row) <= COLUMN["Folder"]:  # the empty table's row
            return ""
        name, role = str(row[COLUMN["Name"]]), str(row[COLUMN["Folder"]])
        return next((r.path for r in self.rows if name_cell(r) == name and (r.role or "") == role), "")

    def select_row(self, evt: gr.SelectData, rows: Any) -> str:
        """A click in the table: the path of that row's file."""
        data = rows.values.tolist() if hasattr(rows, "values") else rows
        if not data or evt.index[0] >= len(data):
            return ""
        return self.path_of(data[evt.index[0]])

    def details(self, path: str) -> dict[str, Any]:
        """Everything the catalog knows about the file at `path`: its record (state and reason, every hash, the
        content type, the folder's role), each metadata field with its source, the other copies on this node."""
        if not path or not self.service.catalog_path.is_file():
            return {}
        db = open_catalog(self.service.catalog_path)
        try:
            found = find(db, self.service.settings().effective_node_id, path)
        finally:
            db.close()
        if not found:
            return {"error": f"{path} is not in the catalog"}
        detail = found[0].to_dict()
        counts = self.counts
        detail["fleet_nodes"] = counts.get(detail["sha256"]) if counts is not None and detail["sha256"] else None
        return detail


def browser_first(button: gr.Button, js: str) -> dict[str, str]:
    """The keyword of `click` that runs `js` in the browser first: `js` in gradio 4, `_js` in gradio 3."""
    return {"js": js} if "js" in inspect.signature(button.click).parameters else {"_js": js}


def unlimited(event: Any) -> dict[str, Any]:
    """Gradio 4 runs one call of an event at a time by default (Forge's queue sets no other limit): a tab that
    follows its transfers must not hold another browser's. Gradio 3 has no such limit, nor the keyword."""
    return {"concurrency_limit": None} if "concurrency_limit" in inspect.signature(event).parameters else {}


def build_tab(service: NodeService) -> gr.Blocks:
    actions = TabActions(service)
    with gr.Blocks(analytics_enabled=False) as tab:
        gr.HTML(f"<style>{TABLE_CSS}</style>", elem_id="modelsync_css")
        status = gr.Markdown(service.status_line())
        with gr.Row():
            scan_button = gr.Button(IDLE_LABEL, variant="primary", elem_id="modelsync_scan")
            calculate_hashes = gr.Checkbox(label="Calculate Hashes", value=actions.calculate_hashes_default())
        progress = gr.Markdown("")
        report = gr.Markdown(actions.report_markdown())
        transfers_note = gr.Markdown("")
        transfers = gr.Dataframe(headers=TRANSFER_HEADERS, value=None, interactive=False, wrap=True,
                                 elem_id="modelsync_transfers")
        recommend_note = gr.Markdown("")
        recommendations = gr.Dataframe(headers=RECOMMENDATION_HEADERS, value=None, interactive=False, wrap=True,
                                       elem_id="modelsync_recommendations")
        order_buttons = [gr.Button("", visible=False, interactive=False, size="sm", elem_id=f"modelsync_order_{slot}")
                         for slot in range(ORDER_SLOTS)]
        order_note = gr.Markdown("")
        with gr.Row():
            type_filter = gr.Dropdown(choices=[ALL_TYPES], value=ALL_TYPES, label="Type")
            text_filter = gr.Textbox(label="Filter", placeholder="name, file, hash or state")
            refresh = gr.Button("Refresh")
        table = gr.Dataframe(headers=TABLE_HEADERS[:-1], datatype=TABLE_TYPES, value=None, interactive=False, wrap=True,
                             elem_id="modelsync_table")
        selected_path = gr.Textbox(label="Path of the file to show (click a row)")
        details = gr.JSON(label="Details")

        filters = [type_filter, text_filter]
        table_outputs = [table, type_filter, status]
        background_outputs = [table, status, report]
        # the label changes in the browser at once; queue=False: the server's answer comes in one round trip
        scan_button.click(actions.start_scan, [calculate_hashes], [scan_button, progress], queue=False,
                          **browser_first(scan_button, actions.scan_click_js())).then(
            actions.follow_scan, None, [scan_button, progress, report]
        ).then(actions.refresh_table, filters, table_outputs).then(actions.follow_background, filters, background_outputs)
        refreshed = refresh.click(actions.refresh_table, filters, table_outputs)
        refreshed.then(actions.follow_background, filters, background_outputs)
        refreshed.then(actions.follow_transfers, None, [transfers, transfers_note], **unlimited(refreshed.then))
        insight_outputs = [recommendations, recommend_note, *order_buttons, table, order_note]
        refreshed.then(actions.follow_insight, filters, insight_outputs)
        for button in order_buttons:  # a button as an input gives its label (gradio 3.41 and 4.40)
            ordered = button.click(actions.order_recommended, [button, *filters], insight_outputs)
            followed = ordered.then(actions.follow_transfers, None, [transfers, transfers_note], **unlimited(ordered.then))
            # once the copies ended: the models table with the new files, the status line, then the advice again
            followed.then(actions.refresh_table, filters, table_outputs).then(actions.after_order, filters,
                                                                              insight_outputs)
        type_filter.change(actions.models_table, filters, [table])
        text_filter.change(actions.models_table, filters, [table])
        table.select(actions.select_row, [table], [selected_path])
        selected_path.change(actions.details, [selected_path], [details])
        tab.load(actions.calculate_hashes_default, None, [calculate_hashes])
        loaded = tab.load(actions.refresh_table, filters, table_outputs)
        loaded.then(actions.follow_background, filters, background_outputs)
        loaded.then(actions.follow_transfers, None, [transfers, transfers_note], **unlimited(loaded.then))
        loaded.then(actions.follow_insight, filters, insight_outputs)
    return tab
