"""The "Model Sync" tab. Uses only gradio APIs present in both 3.41 (A1111) and 4.40 (Forge)."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import gradio as gr

from ..shared.catalog import migrate, open_catalog
from ..shared.units import human_size
from .node_service import NodeService, ScanState
from .thumbnails import thumbnail_markdown

TABLE_HEADERS = ["Preview", "Name", "Type", "Base", "AutoV2", "Size", "Metadata source", "Fleet nodes", "Path"]
TABLE_TYPES = ["markdown"] + ["str"] * (len(TABLE_HEADERS) - 1)
ALL_TYPES = "All"
POLL_SECONDS = 0.5
IDLE_LABEL = "Scan for New Models"


def progress_text(state: ScanState) -> str:
    if state.pushing:
        return "Pushing the inventory to the central server..."
    progress = state.progress
    if progress is None:
        return "Starting..."
    eta = f", about {progress.eta_seconds:.0f} s left" if progress.eta_seconds is not None else ""
    return (
        f"{progress.phase}: {progress.files_done}/{progress.files_total} files, "
        f"{human_size(progress.bytes_done)} / {human_size(progress.bytes_total)}{eta}"
    )


class TabActions:
    """What the tab's controls call; plain functions of the node service so tests drive the same code."""

    def __init__(self, service: NodeService):
        self.service = service
        self.counts: dict[str, int] | None = None  # fleet node counts by SHA256, read by refresh_table
        self.rows: list[dict[str, Any]] = []  # the node's files from its catalog, read by refresh_table

    def scanning_label(self, calculate_hashes: bool) -> str:
        return "Scanning + Calculating Hashes..." if calculate_hashes else "Scanning..."

    def start_scan(self, calculate_hashes: bool) -> tuple[dict[str, Any], str]:
        """The button: start a scan (or follow the one running) and disable the button."""
        self.service.start_scan(bool(calculate_hashes))
        running = self.service.scan_state
        return gr.update(value=self.scanning_label(running.calculate_hashes), interactive=False), progress_text(running)

    def follow_scan(self) -> Iterator[tuple[dict[str, Any], str, str]]:
        """Yields (button, progress, report) until the running scan and its push end, then the final report."""
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

    def _local_rows(self) -> list[dict[str, Any]]:
        if not self.service.catalog_path.is_file():
            return []
        db = open_catalog(self.service.catalog_path)
        try:
            migrate(db)
            return [
                dict(row)
                for row in db.query(
                    """SELECT a.path, a.rel_name, a.role, a.size, m.name, m.type, m.base, m.hash_autov2,
                              m.hash_sha256, m.metadata_source, a.content_type, a.content_base
                       FROM model_server_availability a LEFT JOIN models m ON m.id = a.model_id
                       WHERE a.server_id = ? ORDER BY a.rel_name""",
                    [self.service.settings().effective_node_id],
                )
            ]
        finally:
            db.close()

    @staticmethod
    def _type_of(row: dict[str, Any]) -> str:
        return row["type"] or row["content_type"] or row["role"] or ""

    def models_table(self, type_filter: str = ALL_TYPES, text: str = "") -> list[list[Any]]:
        """The filter controls: the node's models of that type whose name, file or hash contains `text` (filtered
        in memory: the catalog is read by refresh_table)."""
        needle = (text or "").strip().lower()
        rows = []
        for r in self.rows:
            model_type = self._type_of(r)
            name = r["name"] or r["rel_name"]
            if type_filter and type_filter != ALL_TYPES and model_type != type_filter:
                continue
            if needle and needle not in f"{name} {r['rel_name']} {r['hash_sha256'] or ''}".lower():
                continue
            fleet = str(self.counts.get(r["hash_sha256"], 0)) if self.counts is not None and r["hash_sha256"] else ""
            rows.append([thumbnail_markdown(r["path"]), name, model_type, r["base"] or r["content_base"] or "",
                         r["hash_autov2"] or "", human_size(r["size"]), r["metadata_source"] or "", fleet, r["path"]])
        return rows

    def refresh_table(self, type_filter: str = ALL_TYPES, text: str = "") -> tuple[list[list[Any]], dict[str, Any], str]:
        """Tab load, the Refresh button and the end of a scan: fleet counts read again from the central server,
        then (table, type choices, status line)."""
        self.counts = self.service.fleet_counts()
        self.rows = self._local_rows()
        types = [ALL_TYPES] + sorted({t for t in map(self._type_of, self.rows) if t})
        return self.models_table(type_filter, text), gr.update(choices=types), self.service.status_line()

    def select_row(self, evt: gr.SelectData, rows: Any) -> str:
        """A click in the table: the path (last column) of that row."""
        data = rows.values.tolist() if hasattr(rows, "values") else rows
        return str(data[evt.index[0]][-1]) if data else ""

    def details(self, path: str) -> dict[str, Any]:
        """Everything the catalog knows about the file at `path`: the file, all paths of its model, all hashes
        and metadata (with the source of each field)."""
        if not path or not self.service.catalog_path.is_file():
            return {}
        db = open_catalog(self.service.catalog_path)
        try:
            copy = next(db.query("SELECT * FROM model_server_availability WHERE path = ?", [path]), None)
            if copy is None:
                return {"error": f"{path} is not in the catalog"}
            model = next(db.query("SELECT * FROM models WHERE id = ?", [copy["model_id"]]), None) if copy["model_id"] else None
            paths = [r["path"] for r in db.query("SELECT path FROM model_server_availability WHERE model_id = ?", [copy["model_id"]])] if model else [path]
        finally:
            db.close()
        fleet = self.counts.get(model["hash_sha256"]) if model and self.counts is not None else None
        return {"file": {k: _json_value(v) for k, v in copy.items()}, "paths": paths, "fleet_nodes": fleet,
                "model": {k: _json_value(v) for k, v in (model or {}).items()}}


def _json_value(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def build_tab(service: NodeService) -> gr.Blocks:
    actions = TabActions(service)
    with gr.Blocks(analytics_enabled=False) as tab:
        status = gr.Markdown(service.status_line())
        with gr.Row():
            scan_button = gr.Button(IDLE_LABEL, variant="primary")
            calculate_hashes = gr.Checkbox(label="Calculate Hashes", value=False)
        progress = gr.Markdown("")
        report = gr.Markdown(actions.report_markdown())
        with gr.Row():
            type_filter = gr.Dropdown(choices=[ALL_TYPES], value=ALL_TYPES, label="Type")
            text_filter = gr.Textbox(label="Filter", placeholder="name, file or hash")
            refresh = gr.Button("Refresh")
        table = gr.Dataframe(headers=TABLE_HEADERS, datatype=TABLE_TYPES, value=[], interactive=False, wrap=True)
        selected_path = gr.Textbox(label="Path of the model to show (click a row)")
        details = gr.JSON(label="Details")

        table_outputs = [table, type_filter, status]
        scan_button.click(actions.start_scan, [calculate_hashes], [scan_button, progress]).then(
            actions.follow_scan, None, [scan_button, progress, report]
        ).then(actions.refresh_table, [type_filter, text_filter], table_outputs)
        refresh.click(actions.refresh_table, [type_filter, text_filter], table_outputs)
        type_filter.change(actions.models_table, [type_filter, text_filter], [table])
        text_filter.change(actions.models_table, [type_filter, text_filter], [table])
        table.select(actions.select_row, [table], [selected_path])
        selected_path.change(actions.details, [selected_path], [details])
        tab.load(actions.refresh_table, [type_filter, text_filter], table_outputs)
    return tab
