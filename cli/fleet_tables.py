"""The central server's answers as tables for people: one function per `fleet` verb, and the rows that the transfer
and webhook verbs print. Only what the server answered is shown (a URL as the server shows it: never its query)."""
from __future__ import annotations

from typing import Any

from modelsync.shared.units import human_size

from .output import print_table

TRANSFER_COLUMNS = ("id", "node", "state", "source", "model", "progress", "reason", "updated_at")
WEBHOOK_COLUMNS = ("id", "url", "events", "enabled", "backlog", "dropped", "description")
DELIVERY_COLUMNS = ("id", "event_type", "state", "attempts", "last_status", "last_error", "next_attempt_at", "created_at")


def _size(value: int | None) -> str | None:
    return human_size(value) if value is not None else None


def _model_name(model: dict[str, Any] | None, fallback: str | None = None) -> str | None:
    if not model:
        return fallback
    return model.get("name") or model.get("filename") or model["sha256"][:12]


def _section(title: str) -> None:
    print(f"\n{title}")


def nodes(answer: dict[str, Any]) -> None:
    rows = []
    for server in answer["servers"]:
        state = server.get("state") or {}
        loaded = (state.get("loaded") or {}).get("title")
        busy = state.get("busy")
        rows.append({**server, "files": server.get("file_count"), "models": server.get("model_count"),
                     "unhashed": server.get("unhashed_count"), "unreachable": server.get("unreachable_count"),
                     "broken": server.get("broken_count"),
                     "loaded": loaded, "activity": None if busy is None else ("busy" if busy else "idle"),
                     "free_disk": _size(state.get("free_bytes_min")),
                     "state_of": None if not state else ("now" if state.get("current") else f"last: {state['reported_at']}")})
    print_table(rows, ("id", "online", "files", "models", "unhashed", "unreachable", "broken", "loaded", "activity",
                       "free_disk", "state_of", "last_seen", "api_url"), empty="no nodes")


def models(answer: dict[str, Any]) -> None:
    rows = [{**m, "nodes": f"{m.get('online_node_count', 0)}/{m.get('node_count', 0)}"} for m in answer["models"]]
    print_table(rows, ("id", "type", "base", "autov2", "nodes", "name"), empty="no models")


def wanted(answer: dict[str, Any]) -> None:
    print_table(answer.get("wanted", []), ("kind", "reference", "requests", "last_wanted"), empty="no wanted models")


def transfer_row(transfer: dict[str, Any]) -> dict[str, Any]:
    source = transfer["source"]
    civitai = source.get("civitai")
    if source["kind"] == "civitai" and civitai:
        named = " ".join(filter(None, (civitai.get("model_name"), civitai.get("version_name"))))
        where = f"civitai: {named or civitai['version_id']}"
    elif source["kind"] == "url":
        where = f"url: {source.get('url')}"
    else:
        where = f"peer: {source.get('server_id') or 'any'}"
    size, done = transfer.get("size"), transfer.get("bytes_done") or 0
    progress = f"{human_size(done) or '0 B'} / {human_size(size) or '?'}"
    if size:
        progress += f" ({100 * done / size:.0f}%)"
    return {**transfer, "node": transfer["server_id"], "source": where, "model": transfer["sha256"][:12],
            "progress": progress}


def transfers(answer: dict[str, Any]) -> None:
    print_table([transfer_row(t) for t in answer["transfers"]], TRANSFER_COLUMNS, empty="no transfers")
    if answer["total"] > len(answer["transfers"]):
        print(f"({len(answer['transfers'])} of {answer['total']}: --limit shows more)")


def updates(answer: dict[str, Any]) -> None:
    rows = [{**m, "nodes": f"{m.get('online_node_count', 0)}/{m.get('node_count', 0)}",
             "new_version": m["update"].get("name"), "version_id": m["update"]["version_id"],
             "published_at": m["update"].get("published_at"), "page": m["update"].get("download_url")}
            for m in answer["models"] if m.get("update")]
    print_table(rows, ("id", "type", "name", "nodes", "new_version", "version_id", "published_at", "page"),
                empty="no model has an update")


def _holders(holders: dict[str, Any] | None) -> str | None:
    return f"{holders['online']}/{holders['all']}" if holders else None


def demand(answer: dict[str, Any]) -> None:
    print(f"{answer['window']} ({answer['from']} .. {answer['to']}): {answer['requests']} requests, "
          f"{answer['unmet']} unmet, {answer['total_models']} models" + (f" of kind {answer['kind']}" if answer.get("kind") else ""))
    rows = [{**m, "model": _model_name(m.get("model"), m.get("label") or m["key"]), "previous": m["previous_requests"],
             "holders": _holders(m.get("holders")), "trend": None if m.get("trend") is None else f"{m['trend']:+.0%}",
             "forecast": f"{m['forecast']:.1f}"} for m in answer["models"]]
    print_table(rows, ("kind", "model", "requests", "unmet", "previous", "holders", "trend", "forecast"),
                empty="no demand recorded in this window")


def risks(answer: dict[str, Any]) -> None:
    print(f"models held by a single node ({answer['single_holder_total']}):")
    print_table([{**r, "model": _model_name(r["model"]), "size": _size(r["bytes"])} for r in answer["single_holder"]],
                ("model", "server_id", "online", "size", "requests_30d"), empty="  none")
    _section(f"demanded models no online node holds ({answer['unmet_total']}):")
    print_table([{**r, "model": _model_name(r.get("model"), r.get("label") or r["key"]), "holders": _holders(r.get("holders"))}
                 for r in answer["unmet"]], ("kind", "model", "requests_30d", "unmet_30d", "holders"), empty="  none")
    cold = answer["cold"]
    if cold["known"]:
        _section(f"cold models, no job in 30 days ({cold['total_models']}):")
        print_table([{**r, "model": _model_name(r["model"]),
                      "nodes": ", ".join(f"{n['server_id']} {human_size(n['bytes'])}" for n in r["nodes"])}
                     for r in cold["models"]], ("model", "last_used", "nodes"), empty="  none")
    else:
        _section("cold models: not known until demand has been recorded for 30 days"
                 + (f" ({cold['from']})" if cold.get("from") else ""))
    _section("free disk:")
    print_table([{**n, "free": _size(n.get("free_bytes")), "floor": _size(n.get("floor_bytes"))} for n in answer["nodes"]],
                ("server_id", "online", "free", "floor", "reported_at"), empty="  no nodes")


def _place_source(source: dict[str, Any]) -> str:
    if source["kind"] == "peer":
        return f"peer: {source.get('server_id')}"
    if source["kind"] == "civitai":
        named = " ".join(filter(None, (source.get("model_name"), source.get("version_name"))))
        return f"civitai: {named or source.get('version_id')}"
    return "none"


def recommendations(answer: dict[str, Any]) -> None:
    disk = (f"free {human_size(answer['free_bytes'])}, floor {human_size(answer['floor_bytes'])}" if answer["disk_known"]
            else "free disk not reported (no place recommendations)")
    print(f"{answer['server_id']} ({'online' if answer['online'] else 'offline'}; {disk}); demand over {answer['window']}")
    _section("place:")
    print_table([{**r, "model": _model_name(r["model"]), "type": r["model"].get("type"), "size": _size(r["model"].get("size")),
                  "source": _place_source(r["source"]), "free_after": _size(r.get("free_after_bytes")),
                  "transfer": f"{r['transfer']['id']} {r['transfer']['state']}" if r.get("transfer") else None}
                 for r in answer["place"]],
                ("model", "type", "size", "requests", "unmet", "source", "free_after", "transfer", "reason"), empty="  nothing")
    if answer["skipped_for_space"]:
        print(f"  ({answer['skipped_for_space']} more demanded models do not fit above the floor)")
    _section("drop:")
    print_table([{**r, "model": _model_name(r["model"]), "size": _size(r["bytes"]),
                  "other_holders": ", ".join(r["other_holders"])} for r in answer["drop"]],
                ("model", "size", "last_used", "other_holders", "reason"),
                empty="  nothing" if answer["cold_known"] else "  nothing yet: cold models are known once demand has been "
                                                                "recorded for 30 days")


def webhook_row(webhook: dict[str, Any]) -> dict[str, Any]:
    return {**webhook, "events": ",".join(webhook["events"])}
