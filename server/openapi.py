"""The OpenAPI 3.1 document of the JSON API (served at /api/v1/openapi.json).

Each route's docstring says what the operation does, its query parameters and, per status it answers, one line
why; this module holds the bodies: the component schemas (plain JSON Schema dicts), the table of operation ->
request body and answer, and `build_document`, which joins them over the app's routes. Every error status gets
the one `Error` schema. A route under /api/ without an entry here, or with a path or query parameter this module
has no schema for, stops the build: nothing reaches the document undescribed.

Property lists are closed for the test suite (tests/support_server.py checks every answer it receives with
`additionalProperties: false` added), but not in the document: a client must accept fields a newer server adds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from starlette.routing import BaseRoute, Route
from starlette.schemas import BaseSchemaGenerator

import modelsync
from modelsync.shared.inventory import FIELD_LIMITS
from modelsync.shared.records import FILE_STATES, ROLES
from modelsync.shared.transfer.failures import REASONS

from .transfers.progress import REPORTED_STATES
from .transfers.records import NO_ONLINE_HOLDER, SOURCE_MODES, STATES

API_VERSION = "1"
OPENAPI_VERSION = "3.1.0"
JSON = "application/json"
_CONVERTOR = re.compile(r":\w+}")  # /models/{id:rowid} -> /models/{id}


# --- building blocks ---------------------------------------------------------------------------------------------
def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema, or null (a `$ref` becomes anyOf [ref, null])."""
    if "type" in schema:
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def obj(properties: dict[str, Any], optional: tuple[str, ...] = (), description: str = "") -> dict[str, Any]:
    """An object whose properties are all required except `optional` ones."""
    schema: dict[str, Any] = {"type": "object", "required": [p for p in properties if p not in optional],
                              "properties": properties}
    if description:
        schema["description"] = description
    return schema


def enum(*values: Any) -> dict[str, Any]:
    return {"type": ["string", "null"] if None in values else "string", "enum": list(values)}


def text(description: str = "") -> dict[str, Any]:
    return {"type": "string", "description": description} if description else {"type": "string"}


STRING, INTEGER, NUMBER, BOOLEAN = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
COUNT = {"type": "integer", "minimum": 0}
TIMESTAMP = {"type": "string", "format": "date-time", "description": "UTC, e.g. 2026-11-24T02:41:41Z"}
ROW_ID = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
SERVER_ID = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", "description": "a node's id"}
STRINGS = array(STRING)
MAYBE_STRING, MAYBE_TIMESTAMP, MAYBE_INTEGER = nullable(STRING), nullable(TIMESTAMP), nullable(INTEGER)
ANY_JSON = {"description": "any JSON value"}
_METADATA_KINDS = {"text": STRING, "words": STRINGS, "number": NUMBER, "integer": INTEGER}
METADATA = {name: _METADATA_KINDS[kind] for name, (kind, _) in FIELD_LIMITS.items()}
FIELD_SOURCES = {"type": "object", "additionalProperties": STRING, "description": "field -> the source of its value"}


# --- component schemas -------------------------------------------------------------------------------------------
_NODE_CONTACT = {"server_id": SERVER_ID, "display_name": MAYBE_STRING, "api_url": MAYBE_STRING, "online": BOOLEAN,
                 "last_contact": MAYBE_TIMESTAMP}
_REFERENCE = {"kind": text("the kind the job names it as: checkpoint, lora, vae, ..."),
              "reference": text("the reference as the registry reads it"), "written": text("as the job writes it")}
_MODEL_SHORT = {"id": ROW_ID, "filename": MAYBE_STRING, "sha256": SHA256, "autov2": MAYBE_STRING}
_MODEL_MATCH = {"id": ROW_ID, "name": MAYBE_STRING, "filename": MAYBE_STRING, "type": MAYBE_STRING,
                "base": MAYBE_STRING, "sha256": SHA256, "autov2": MAYBE_STRING, "autov1": MAYBE_STRING,
                "autov3": MAYBE_STRING, "civitai_id": MAYBE_INTEGER, "civitai_version_id": MAYBE_INTEGER,
                "civitai_model_name": MAYBE_STRING, "matched_by": STRINGS}
_FILE_COLUMNS = {"id": ROW_ID, "model_id": MAYBE_INTEGER, "path": STRING, "rel_name": MAYBE_STRING,
                 "role": MAYBE_STRING, "size": MAYBE_INTEGER, "mtime_ns": MAYBE_INTEGER, "last_seen": MAYBE_TIMESTAMP}
_NAME_CONFLICT_MODEL = obj({**_MODEL_SHORT, "nodes": STRINGS, "loaded_by": STRINGS})
_SCAN_COUNTS = {name: COUNT for name in ("total", "added", "updated", "removed", "hashesCalculated", "hashesSkipped",
                                         "hashesCached", "duplicates", "errors", "broken", "unreachable")}
_SYNC_COUNTS = {name: COUNT for name in ("added", "updated", "removed", "unchanged")}

COMPONENTS: dict[str, dict[str, Any]] = {
    "Error": {
        **obj({"error": text("what went wrong"), "field": nullable(text("the part of the request, e.g. files[12].sha256"))}),
        "additionalProperties": False,
    },
    # nodes
    "Folder": obj({"path": STRING, "reason": STRING}, description="a folder of a node that cannot be read now"),
    "Node": obj({
        "id": SERVER_ID, "display_name": MAYBE_STRING, "api_url": MAYBE_STRING,
        "roots": nullable(array(obj({"path": STRING, "role": MAYBE_STRING}))),
        "unavailable": array(ref("Folder")), "created_at": MAYBE_TIMESTAMP, "last_sync": MAYBE_TIMESTAMP,
        "last_heartbeat": MAYBE_TIMESTAMP,
        "last_sync_summary": nullable(obj({**_SYNC_COUNTS, "files": COUNT, "models": COUNT, "unhashed": COUNT,
                                           "unusable": COUNT}, optional=("files", "models", "unhashed", "unusable"))),
        "file_count": COUNT, "model_count": COUNT, "unhashed_count": COUNT, "broken_count": COUNT,
        "unreachable_count": COUNT, "online": BOOLEAN, "last_seen": MAYBE_TIMESTAMP,
        "state": {**nullable(ref("NodeState")), "description": "what the node last reported of itself (null: nothing yet)"},
    }),
    "NodeList": obj({"servers": array(ref("Node")), "offline_after_seconds": NUMBER}),
    "NodeFiles": obj({
        "server_id": SERVER_ID, "total": COUNT, "limit": COUNT, "offset": COUNT,
        "files": array(obj({**_FILE_COLUMNS, "has_preview": MAYBE_INTEGER, "content_type": MAYBE_STRING,
                            "content_base": MAYBE_STRING, "problem": MAYBE_STRING})),
    }, description="the node's usable files (state=ok)"),
    "NodeUnusableFiles": obj({
        "server_id": SERVER_ID, "state": enum(*(s for s in FILE_STATES if s != "ok")), "total": COUNT,
        "limit": COUNT, "offset": COUNT,
        "files": array(obj({**_FILE_COLUMNS, "state": STRING, "reason": MAYBE_STRING, "since": MAYBE_TIMESTAMP,
                            "hash_autov2": MAYBE_STRING})),
    }, description="the node's broken or unreachable files (state=broken|unreachable)"),
    "Enriched": obj({"model_id": ROW_ID, "metadata": obj(METADATA, optional=tuple(METADATA)),
                     "field_sources": FIELD_SOURCES, "preview_url": MAYBE_STRING}),
    "SyncAnswer": obj({
        "server_id": SERVER_ID, **_SYNC_COUNTS, "unusable": COUNT, "new_models": COUNT, "last_sync": TIMESTAMP,
        "enriched": {"type": "object", "additionalProperties": ref("Enriched"), "description": "sha256 -> what the registry adds"},
        "warnings": array(obj({"path": STRING, "field": STRING, "message": STRING})),
        "warnings_omitted": COUNT, "previews_wanted": array(SHA256), "registered": BOOLEAN,
        "token": text("the node's token: only in the answer that registers it"),
    }, optional=("warnings_omitted", "token")),
    "HeartbeatAnswer": obj({"server_id": SERVER_ID, "last_heartbeat": TIMESTAMP, "registered": BOOLEAN,
                            "token": text("only in the answer that registers the node")}, optional=("token",)),
    "PreviewStored": obj({"sha256": SHA256, "stored": BOOLEAN, "width": COUNT, "height": COUNT,
                          "reason": text("why it was not stored")}, optional=("width", "height", "reason")),
    "NodeDeleted": obj({"deleted": SERVER_ID, "files_removed": COUNT}),
    "TokenIssued": obj({"server_id": SERVER_ID, "token": STRING}),
    # models
    "ModelSummary": obj({
        "id": ROW_ID, "name": MAYBE_STRING, "filename": MAYBE_STRING, "type": MAYBE_STRING, "base": MAYBE_STRING,
        "sha256": SHA256, "autov1": MAYBE_STRING, "autov2": MAYBE_STRING, "autov3": MAYBE_STRING,
        "size": MAYBE_INTEGER, "metadata_source": MAYBE_STRING, "civitai_id": MAYBE_INTEGER,
        "civitai_version_id": MAYBE_INTEGER, "civitai_model_name": MAYBE_STRING, "created_at": MAYBE_TIMESTAMP,
        "updated_at": MAYBE_TIMESTAMP, "last_used": MAYBE_TIMESTAMP, "overridden": STRINGS, "node_count": COUNT,
        "online_node_count": COUNT, "preview_url": MAYBE_STRING, "update": nullable(ref("CivitaiUpdate")),
    }),
    "ModelList": obj({"models": array(ref("ModelSummary")), "total": COUNT, "limit": COUNT, "offset": COUNT,
                      "page": COUNT, "pages": COUNT}),
    "NodeCopy": obj({
        "server_id": SERVER_ID, "display_name": MAYBE_STRING, "api_url": MAYBE_STRING, "online": BOOLEAN,
        "local_name": text("the name a job uses for it on that node"), "last_seen": MAYBE_TIMESTAMP,
        "files": array(obj({"path": STRING, "rel_name": MAYBE_STRING, "local_name": STRING, "last_seen": MAYBE_TIMESTAMP})),
    }, description="a node holding a model, with its files of it"),
    "ModelAvailability": obj({"model_id": ROW_ID, "sha256": SHA256, "available": BOOLEAN, "online": BOOLEAN,
                              "servers": array(ref("NodeCopy"))}),
    "ModelInfo": obj({
        "id": ROW_ID, "sha256": SHA256, "hash_sha256": SHA256, "hash_autov1": MAYBE_STRING,
        "hash_autov2": MAYBE_STRING, "hash_autov3": MAYBE_STRING, "size": MAYBE_INTEGER, "filename": MAYBE_STRING,
        "forge_format": MAYBE_STRING, **{name: nullable(schema) for name, schema in METADATA.items()},
        "metadata_source": MAYBE_STRING, "field_sources": FIELD_SOURCES,
        "overrides": {"type": "object", "description": "field -> the operator's value (PATCH /api/v1/models/{id})"},
        "has_embedded_metadata": MAYBE_INTEGER, "last_used": MAYBE_TIMESTAMP, "created_at": MAYBE_TIMESTAMP,
        "updated_at": MAYBE_TIMESTAMP, "servers": array(ref("NodeCopy")), "available": BOOLEAN, "online": BOOLEAN,
        "aliases": array(obj({"server_id": SERVER_ID, "kind": STRING, "alias": STRING, "local_name": MAYBE_STRING})),
        "civitai_lookup": nullable(obj({"status": STRING, "checked_at": MAYBE_TIMESTAMP, "attempts": MAYBE_INTEGER,
                                        "next_attempt_at": MAYBE_TIMESTAMP, "version_id": MAYBE_INTEGER,
                                        "error": MAYBE_STRING})),
        "civitai_rejected": array(obj({"version_id": INTEGER, "rejected_at": TIMESTAMP})),
        "preview": nullable(obj({"status": STRING, "source_url": MAYBE_STRING, "checked_at": MAYBE_TIMESTAMP,
                                 "error": MAYBE_STRING})),
        "preview_url": MAYBE_STRING, "update": nullable(ref("CivitaiUpdate")),
        "update_check": nullable(ref("UpdateCheck")),
    }),
    "AvailabilityMarked": obj({"model_id": ROW_ID, "server_id": SERVER_ID, "path": STRING, "rel_name": STRING,
                               "created": BOOLEAN, "registered": BOOLEAN, "token": STRING},
                              optional=("registered", "token")),
    "AvailabilityRemoved": obj({"model_id": ROW_ID, "server_id": SERVER_ID, "removed": COUNT}),
    "MetadataRefresh": obj({"model_id": ROW_ID, "sha256": SHA256, "queued": BOOLEAN, "worker_running": BOOLEAN}),
    "ScanResult": obj({
        "success": BOOLEAN, "server_id": SERVER_ID, "calculate_hashes": BOOLEAN, **_SCAN_COUNTS, "message": STRING,
        "problems": array(obj({"path": STRING, "reason": STRING})),
        "duplicate_models": array(obj({"sha256": SHA256, "paths": STRINGS})),
        "unavailable": array(obj({"path": STRING, "reason": STRING, "files_kept": COUNT})),
    }),
    "HashOutcome": obj({
        "file_id": ROW_ID, "path": STRING, "previous_sha256": nullable(SHA256), "sha256": SHA256,
        "autov1": MAYBE_STRING, "autov2": MAYBE_STRING, "autov3": MAYBE_STRING, "changed": BOOLEAN,
        "error": text("why the file could not be hashed (then no hashes)"),
    }, optional=("sha256", "autov1", "autov2", "autov3", "changed", "error")),
    "ModelHashed": obj({"model_id": ROW_ID, "files": array(ref("HashOutcome"))}),
    "FileHashed": obj({"file_id": ROW_ID, "model_id": MAYBE_INTEGER, "files": array(ref("HashOutcome"))}),
    "RegistryReset": obj({"reset": {"const": True}, "backup": text("the backup's path on the server")}),
    "Overridden": obj({"model_id": ROW_ID, "overrides": {"type": "object"}, "model": ref("ModelInfo")}),
    "MatchRejected": obj({"model_id": ROW_ID, "rejected_version_id": INTEGER, "cleared": STRINGS,
                          "model": ref("ModelInfo")}),
    "AdminCheck": obj({"admin": {"const": True}}),
    "Health": obj({
        "status": enum("ok", "degraded"), "disk_full": BOOLEAN, "reason": STRING,
        "disk_full_since": TIMESTAMP, "schema_version": INTEGER, "models": COUNT, "servers": COUNT,
        "civitai_worker": nullable(obj({"running": BOOLEAN, "paused_seconds": NUMBER, "found": COUNT,
                                        "not_found": COUNT, "errors": COUNT, "previews": COUNT})),
        "uptime_seconds": NUMBER,
    }, optional=("reason", "disk_full_since")),
    "OpenAPIDocument": obj({"openapi": STRING, "info": obj({"title": STRING, "version": STRING, "description": STRING,
                                                      "license": {"type": "object"}, "x-api-version": STRING},
                                                     ("description", "license")),
                            "paths": {"type": "object"}, "components": {"type": "object"}, "tags": array({"type": "object"})}),
    # job checks
    "NodeContact": obj(_NODE_CONTACT, description="a node and whether it is online"),
    "ModelShort": obj(_MODEL_SHORT),
    "ModelMatch": obj(_MODEL_MATCH),
    "Missing": obj({**_REFERENCE, "why": STRING}),
    "Requirement": obj({
        **_REFERENCE, "fields": array(text("where the job names it")),
        "status": enum("resolved", "name_conflict", "ambiguous", "unknown", "conflict"),
        "match_type": MAYBE_STRING, "reason": STRING, "model": nullable(ref("ModelMatch")),
        "candidates": array(obj({**_MODEL_MATCH, "nodes": STRINGS, "loaded_by": STRINGS}, optional=("loaded_by",))),
        "nodes": STRINGS, "pending_on": STRINGS, "name_clash_on": STRINGS,
        "local_name": nullable(text("dispatch-check: the name on that node")),
        "title": text("dispatch-check, a checkpoint: its title on that node"),
    }, optional=("name_clash_on", "local_name", "title")),
    "NameConflict": obj({
        "type": {"const": "name_conflict"}, **_REFERENCE, "reason": STRING,
        "models": array(_NAME_CONFLICT_MODEL), "model": ref("ModelShort"),
        "others": array(obj({**_MODEL_SHORT, "nodes": STRINGS})),
    }, optional=("models", "model", "others"),
        description="a name meaning different content on different nodes: `models` (availability) or `model` and "
                    "`others` (dispatch-check)"),
    "JobAvailability": obj({
        "format": STRING,
        "model_availability": obj({
            "available": BOOLEAN, "reason": STRING, "requirements": array(ref("Requirement")),
            "servers": array(obj({**_NODE_CONTACT, "has_all": BOOLEAN, "missing": array(ref("Missing")),
                                  "loads": array(obj({**_REFERENCE, "model": ref("ModelShort")}))})),
            "candidates": {**array(ref("RankedNode")), "description": "the online nodes that hold everything, best first"},
            "warnings": array(ref("NameConflict")),
        }),
    }),
    "DispatchCheck": obj({
        "server_id": SERVER_ID, "online": BOOLEAN, "ok": BOOLEAN,
        "action": enum("retry_later", "route_elsewhere", "fail", None), "reason": STRING,
        "missing": array(ref("Missing")), "requirements": array(ref("Requirement")),
        "payload": {**ANY_JSON, "description": "when ok: the job with the node's own model names"},
        "override_settings": {"type": "object", "additionalProperties": STRING},
        "nodes": {**array(ref("RankedNode")), "description": "where the job can run instead, best first"},
        "better_nodes": {**array(ref("RankedNode")), "description": "when ok: other idle nodes that have the job's "
                                                                    "checkpoint loaded (a hint; the queue decides)"},
        "warnings": array({"anyOf": [ref("NameConflict"), ref("FulfilNotAuthorised"), ref("CivitaiLookupFailed")]}),
        "transfers": {**array(ref("Transfer")), "description": "with fulfil, when not ok: the copies to this node, one "
                                                                 "per missing model"},
    }, optional=("transfers",)),
    "FulfilNotAuthorised": obj({"type": {"const": "fulfil_not_authorised"}, "reason": STRING},
                               description="fulfil was asked for by a client that may not order copies: nothing was "
                                           "ordered, the answer is the one without fulfil"),
    "CheckpointVerify": obj({
        "success": BOOLEAN, "provided_value": {"type": ["integer", "string"]},
        "interpreted_as": enum("civitai_version_id", "hash"), "available": BOOLEAN, "reason": STRING,
        "status": STRING, "hash": MAYBE_STRING, "match_type": MAYBE_STRING, "civitai_model_id": MAYBE_INTEGER,
        "model_info": nullable(obj({
            "id": ROW_ID, "name": MAYBE_STRING, "filename": MAYBE_STRING, "type": MAYBE_STRING, "base": MAYBE_STRING,
            "hash_autov2": MAYBE_STRING, "hash_sha256": SHA256, "civitai_id": MAYBE_INTEGER,
            "civitai_version_id": MAYBE_INTEGER, "civitai_model_name": MAYBE_STRING})),
        "servers": array(obj({**_NODE_CONTACT, "local_name": STRING})), "candidates": array(ref("ModelMatch")),
    }),
    "WantedList": obj({
        "wanted": array(obj({
            "kind": STRING, "reference_key": STRING, "reference": MAYBE_STRING, "model_id": MAYBE_INTEGER,
            "requests": COUNT, "first_wanted": MAYBE_TIMESTAMP, "last_wanted": MAYBE_TIMESTAMP,
            "available_now": BOOLEAN, "nodes_now": STRINGS, "model": nullable(ref("ModelMatch")),
        })),
        "limit": COUNT, "offset": COUNT, "next_offset": MAYBE_INTEGER,
    }),
    # transfers
    "Transfer": obj({
        "id": ROW_ID, "server_id": {**SERVER_ID, "description": "the destination node"}, "sha256": SHA256,
        "model_id": MAYBE_INTEGER, "state": enum(*STATES),
        "source": ref("TransferSource"),
        "bytes_done": COUNT, "size": nullable(COUNT), "speed_bps": nullable(NUMBER),
        "eta_seconds": nullable({**NUMBER, "description": "the node's estimate; null until it reports one"}),
        "dest_path": MAYBE_STRING,
        "reason": nullable(text(f"a stable word: {', '.join([*REASONS, NO_ONLINE_HOLDER])}")),
        "error": nullable(text("the reason in a sentence")), "created_at": TIMESTAMP, "updated_at": TIMESTAMP,
    }, description="a copy of a model to a node; never carries a grant"),
    "TransferList": obj({"transfers": array(ref("Transfer")), "total": COUNT, "limit": COUNT, "offset": COUNT}),
    "TransferOrders": obj({"orders": array(obj({
        "transfer_id": ROW_ID, "sha256": SHA256, "size": nullable(COUNT),
        "rel_name": text("where the file goes, relative to a root of its role (made safe)"), "role": MAYBE_STRING,
        "sources": array({"oneOf": [ref("PeerOrderSource"), ref("CivitaiOrderSource"), ref("UrlOrderSource")]}),
    }))}, description="what the node should fetch now, best source first"),
    # request bodies
    "Inventory": obj({
        "format": {"const": 1}, "server_id": SERVER_ID, "display_name": STRING, "api_url": STRING,
        "files_url": text("the base URL peers fetch this node's files from"),
        "roots": array(obj({"path": STRING, "role": enum(*ROLES)}, optional=("role",))),
        "unavailable": array(ref("Folder")),
        "files": array(obj({
            "path": STRING, "rel_name": STRING, "role": enum(*ROLES), "size": COUNT, "mtime_ns": COUNT,
            "sha256": nullable({"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}),
            "autov1": nullable({"type": "string", "pattern": "^[0-9a-fA-F]{8}$"}),
            "autov3": nullable({"type": "string", "pattern": "^[0-9a-fA-F]{1,64}$"}),
            "type": MAYBE_STRING, "base": MAYBE_STRING, "metadata_source": MAYBE_STRING,
            "metadata": obj(METADATA, optional=tuple(METADATA)), "field_sources": FIELD_SOURCES,
            "has_embedded_metadata": BOOLEAN, "has_preview": BOOLEAN, "state": enum(*FILE_STATES),
            "problem": MAYBE_STRING,
        }, optional=("rel_name", "role", "mtime_ns", "sha256", "autov1", "autov3", "type", "base", "metadata_source",
                     "metadata", "field_sources", "has_embedded_metadata", "has_preview", "state", "problem"))),
    }, optional=("display_name", "api_url", "files_url", "roots", "unavailable"),
        description="a node's whole inventory, format 1 (docs/api.md)"),
    "Job": obj({
        "job": {**ANY_JSON, "description": "an A1111/Forge API body, an infotext, a StableQueue job or a list of requirements"},
        "format": {**enum("auto", "a1111", "infotext", "stablequeue", "requirements"), "default": "auto"},
        "record": {"type": "boolean", "default": True,
                   "description": "false: a look only (unmet references are not counted as wanted)"},
    }, optional=("format", "record")),
    "DispatchJob": obj({
        "job": {**ANY_JSON, "description": "an A1111/Forge API body, an infotext, a StableQueue job or a list of requirements"},
        "format": {**enum("auto", "a1111", "infotext", "stablequeue", "requirements"), "default": "auto"},
        "record": {"type": "boolean", "default": True,
                   "description": "false: a look only (unmet references are not counted as wanted)"},
        "fulfil": {"type": "boolean", "description": "order copies of the models the node lacks from peers (default: "
                                                     "MODELSYNC_FULFIL)"},
    }, optional=("format", "record", "fulfil")),
    "TransferOrder": obj({
        "server_id": {**SERVER_ID, "description": "the destination node"}, "sha256": SHA256, "model_id": ROW_ID,
        "source": {**enum(*SOURCE_MODES), "default": "auto"},
        "from_server_id": {**SERVER_ID, "description": "the only node to copy from"},
        "civitai_version_id": {**ROW_ID, "description": "download a file of this Civitai model version"},
        "file_id": {**ROW_ID, "description": "with civitai_version_id: that file (default: the version's primary file)"},
        "url": text("download this http(s) URL (sha256 required); its query is never shown; the file is named by "
                    "its last path segment"),
        "role": {**enum(*ROLES), "description": "with url: the folder role the file goes to (required when the "
                                                "registry does not know the model's type)"},
    }, optional=("sha256", "model_id", "source", "from_server_id", "civitai_version_id", "file_id", "url", "role"),
        description="sha256 or model_id names the model; or civitai_version_id (+ file_id); or url + sha256"),
    "ProgressReport": obj({
        "state": enum(*REPORTED_STATES), "bytes_done": COUNT, "size": COUNT, "speed_bps": nullable(NUMBER),
        "eta_seconds": nullable(NUMBER), "reason": text(f"with failed: {', '.join(REASONS)}"),
        "error": text("the failure in a sentence"), "dest_path": STRING,
        "source_server_id": {**SERVER_ID, "description": "the source used"},
        "civitai_retry_after": {**NUMBER, "description": "seconds: Civitai answered 429 or 5xx; the fleet backs off "
                                                         "that long"},
    }, optional=("size", "speed_bps", "eta_seconds", "reason", "error", "dest_path", "source_server_id",
                 "civitai_retry_after")),
    # --- downloads (#12) ---
    "TransferSource": obj({
        "kind": enum("peer", "civitai", "url"),
        "server_id": nullable(text("peer: the source node, when one is known")),
        "civitai": nullable(obj({
            "model_id": MAYBE_INTEGER, "model_name": MAYBE_STRING, "version_id": ROW_ID, "version_name": MAYBE_STRING,
            "file_id": ROW_ID, "file_name": STRING})),
        "url": nullable(text("url: scheme://host/path (never the query)")),
    }, description="where the transfer's bytes come from"),
    "PeerOrderSource": obj({
        "kind": {"const": "peer"}, "server_id": SERVER_ID, "url": text("the file on the source node"),
        "grant": text("a short-lived grant for this file, source and destination: a secret")}),
    "CivitaiOrderSource": obj({
        "kind": {"const": "civitai"}, "version_id": ROW_ID, "file_id": ROW_ID,
        "download_url": text("Civitai's download endpoint of the file (it redirects to storage)"),
        "api_key": text("the server's Civitai key, only with MODELSYNC_SHARE_CIVITAI_KEY=true: a secret"),
        "version": {**ANY_JSON, "description": "the Civitai model-version JSON (sidecar, preview)"},
    }, optional=("api_key",)),
    "UrlOrderSource": obj({"kind": {"const": "url"}, "url": text("http(s); the order's sha256 is the expected one")}),
    "CivitaiLookupFailed": obj({"type": enum("civitai_lookup_failed", "civitai_busy"), "reason": STRING},
                               description="fulfil could not ask Civitai about a reference now (it failed, or its "
                                           "turn in the fleet's rate is too far off): it stays as it is; the next "
                                           "check asks again"),
    # --- Civitai update checks (#12) ---
    "CivitaiUpdate": obj({
        "version_id": {**INTEGER, "description": "the newer Civitai model version"}, "name": MAYBE_STRING,
        "published_at": nullable(text("when Civitai published it (Civitai's ISO-8601 time)")),
        "download_url": text("the version's page on Civitai (civitai.com/models/{model}?modelVersionId={version}); "
                             "POST /api/v1/models/{id}/update puts it on the nodes"),
    }, description="a newer version of the model's Civitai model: published, out of early access, the same base "
                   "model, published after the version the fleet holds"),
    "UpdateCheck": obj({
        "checked_at": nullable({**TIMESTAMP, "description": "the last answer from Civitai (null: none yet)"}),
        "next_check_at": TIMESTAMP, "attempts": {**COUNT, "description": "failed checks since the last answer"},
        "error": nullable(text("the last failure (429, 5xx, timeout): the last answer stands")),
    }, description="the update checks of the model's Civitai model"),
    "UpdateChecked": obj({
        "model_id": ROW_ID, "outcome": enum("checked", "failed", "stopped"),
        "update": nullable(ref("CivitaiUpdate")), "update_check": nullable(ref("UpdateCheck")),
    }),
    "UpdateOrdered": obj({
        "model_id": ROW_ID, "version_id": INTEGER, "created": COUNT,
        "transfers": {**array(ref("Transfer")), "description": "one per node that holds the model (new or standing)"},
        "skipped": array(obj({"server_id": SERVER_ID, "why": STRING})),
    }),
    # --- node state and ranking (#13) ---
    "NodeStateReport": obj({
        "loaded": nullable(ref("LoadedCheckpoint")), "selected": nullable(ref("LoadedCheckpoint")),
        "modules": {**STRINGS, "description": "Forge's additional modules (VAE / text encoders)"},
        "busy": {"type": ["boolean", "null"], "description": "the host is generating (null: not known)"},
        "gpu": nullable(obj({"total_bytes": COUNT, "free_bytes": COUNT})),
        "disks": array(ref("DiskSpace")),
        "floor_bytes": {**COUNT, "description": "the free space the node's transfers leave on a disk"},
    }, optional=("loaded", "selected", "modules", "busy", "gpu", "disks", "floor_bytes"),
        description="what a node reports of itself with a heartbeat"),
    "LoadedCheckpoint": obj({"title": STRING, "sha256": nullable(SHA256)},
                            description="a checkpoint as the host names it, with its SHA256 when known"),
    "DiskSpace": obj({"root": STRING, "role": MAYBE_STRING, "free_bytes": COUNT, "total_bytes": COUNT,
                      "device": {"type": ["integer", "null"], "minimum": 0,
                                 "description": "the filesystem's device id on the node (roots with the same one "
                                                "share their free space); absent or null: not reported"}},
                     optional=("device",), description="the disk under one of the node's model folders"),
    "NodeState": obj({
        "reported_at": TIMESTAMP,
        "current": {**BOOLEAN, "description": "false: the node is offline and this is its last report (never ranked)"},
        "loaded": {**nullable(ref("LoadedCheckpoint")), "description": "resident in memory"},
        "selected": {**nullable(ref("LoadedCheckpoint")), "description": "the setting (Forge loads it at the next job)"},
        "modules": STRINGS, "busy": {"type": ["boolean", "null"]},
        "gpu": nullable(obj({"total_bytes": COUNT, "free_bytes": COUNT})), "disks": array(ref("DiskSpace")),
        "floor_bytes": MAYBE_INTEGER, "free_bytes_min": {**MAYBE_INTEGER, "description": "the least free of its disks"},
    }),
    "RankedNode": obj({
        **_NODE_CONTACT, "rank": {"type": "integer", "minimum": 1},
        "reasons": {**STRINGS, "description": 'what placed it, e.g. ["checkpoint loaded", "idle"]'},
    }, description="a node that can run the job, best first (docs/job-queue.md, Ranking)"),
    # --- demand, fleet analytics, recommendations (#13) ---
    "InsightModel": obj({
        "id": ROW_ID, "name": MAYBE_STRING, "filename": MAYBE_STRING, "type": MAYBE_STRING, "sha256": SHA256,
        "size": MAYBE_INTEGER, "civitai_version_id": MAYBE_INTEGER,
    }, description="a model of the registry"),
    "Holders": obj({"online": COUNT, "all": COUNT, "nodes": {**array(SERVER_ID), "description": "every holder"}},
                   description="the nodes holding the model (online now, and all)"),
    "DemandPoint": obj({"hour": {**TIMESTAMP, "description": "the hour's start, UTC"}, "requests": COUNT,
                        "unmet": COUNT}),
    "DemandItem": obj({
        "kind": STRING, "key": text('"sha256:<hex>" for a model the registry knows, else the reference '
                                    '("name:<normalised>", "civitai_version_id:<n>", ...)'),
        "label": nullable(text("the reference as a job last wrote it")),
        "model": nullable(ref("InsightModel")), "requests": COUNT,
        "unmet": {**COUNT, "description": "requests when no online node held it"},
        "previous_requests": {**COUNT, "description": "in the window before"},
        "holders": {**nullable(ref("Holders")), "description": "null when the reference is no single known model"},
        "trend": {**nullable(NUMBER), "description": "(requests - previous_requests) / previous_requests; null when "
                                                     "previous_requests is 0"},
        "forecast": {**NUMBER, "description": "requests expected in the next window: exponential smoothing "
                                              "(alpha 0.3) of this window's hourly counts x its hours"},
    }),
    "DemandAnswer": obj({
        "window": enum("24h", "7d", "30d"), "hours": COUNT, "from": TIMESTAMP, "to": TIMESTAMP,
        "kind": MAYBE_STRING, "models": array(ref("DemandItem")), "total_models": COUNT, "requests": COUNT,
        "unmet": COUNT, "series": {**array(ref("DemandPoint")), "description": "every model's counts per hour"},
    }),
    "DemandSeries": obj({
        "window": enum("24h", "7d", "30d"), "hours": COUNT, "from": TIMESTAMP, "to": TIMESTAMP,
        "model": ref("InsightModel"), "requests": COUNT, "unmet": COUNT, "previous_requests": COUNT,
        "holders": ref("Holders"), "trend": nullable(NUMBER), "forecast": NUMBER,
        "series": array(ref("DemandPoint")),
    }),
    "NodeDisk": obj({
        "server_id": SERVER_ID, "display_name": MAYBE_STRING, "online": BOOLEAN,
        "reported_at": nullable({**TIMESTAMP, "description": "its last state report (null: none)"}),
        "free_bytes": {**MAYBE_INTEGER, "description": "the least free of its disks"},
        "floor_bytes": {**MAYBE_INTEGER, "description": "the free space its transfers leave"},
        "disks": array(obj({"root": STRING, "role": MAYBE_STRING, "free_bytes": MAYBE_INTEGER,
                            "total_bytes": MAYBE_INTEGER})),
    }),
    "BytesOnNode": obj({"server_id": SERVER_ID, "bytes": COUNT}),
    "FleetAnalytics": obj({
        "single_holder": array(obj({
            "model": ref("InsightModel"), "server_id": SERVER_ID, "online": BOOLEAN, "bytes": COUNT,
            "requests_30d": COUNT})),
        "single_holder_total": COUNT,
        "unmet": array(obj({
            "kind": STRING, "key": STRING, "label": MAYBE_STRING, "model": nullable(ref("InsightModel")),
            "requests_30d": COUNT, "unmet_30d": COUNT, "holders": nullable(ref("Holders"))})),
        "unmet_total": COUNT,
        "cold": obj({
            "known": {**BOOLEAN, "description": "demand has been recorded for 30 days (before: nothing is cold)"},
            "from": nullable({**TIMESTAMP, "description": "when models can first be called cold"}),
            "models": array(obj({"model": ref("InsightModel"), "last_used": MAYBE_TIMESTAMP,
                                 "nodes": array(ref("BytesOnNode"))})),
            "total_models": COUNT,
            "nodes": {**array(ref("BytesOnNode")), "description": "the disk each node would get back"},
        }),
        "nodes": array(ref("NodeDisk")),
        "recording_since": nullable({**TIMESTAMP, "description": "when demand counting began"}),
    }),
    "Recommendations": obj({
        "server_id": SERVER_ID, "online": BOOLEAN,
        "disk_known": {**BOOLEAN, "description": "the node reported its free disk (else no place recommendations)"},
        "free_bytes": MAYBE_INTEGER, "floor_bytes": MAYBE_INTEGER, "window": STRING,
        "place": array(obj({
            "model": ref("InsightModel"), "requests": COUNT, "unmet": COUNT, "reason": STRING,
            "source": obj({"kind": enum("peer", "civitai", "none"), "server_id": SERVER_ID, "version_id": INTEGER,
                           "model_name": MAYBE_STRING, "version_name": MAYBE_STRING},
                          ("server_id", "version_id", "model_name", "version_name"),
                          "peer: an online node that can serve it; civitai: the model's Civitai version"),
            "root": MAYBE_STRING, "free_after_bytes": {**INTEGER, "description": "the root's free space after it"},
            "transfer": {**nullable(obj({"id": ROW_ID, "state": STRING})),
                         "description": "a transfer of it to this node that stands already"},
        })),
        "skipped_for_space": {**COUNT, "description": "demanded models that do not fit above the floor"},
        "drop": array(obj({
            "model": ref("InsightModel"), "bytes": COUNT, "last_used": MAYBE_TIMESTAMP, "reason": STRING,
            "other_holders": array(SERVER_ID)})),
        "cold_known": BOOLEAN, "cold_from": MAYBE_TIMESTAMP,
    }),
    # --- webhooks (#13) ---
    "WebhookNew": obj({
        "url": text("http or https, no credentials; loopback and private addresses are allowed"),
        "events": {**STRINGS, "description": 'event types, or ["*"] for every one'},
        "description": nullable(text("at most 500 characters")),
    }, optional=("description",)),
    "Webhook": obj({
        "id": ROW_ID, "url": text("scheme://host/path: the query is never shown (it may hold a token)"),
        "events": STRINGS, "description": MAYBE_STRING,
        "enabled": {**BOOLEAN, "description": "false: disabled (the receiver answered 410); a retry enables it"},
        "disabled_reason": MAYBE_STRING, "disabled_at": MAYBE_TIMESTAMP,
        "backlog": {**COUNT, "description": "events not delivered yet"},
        "dropped": {**COUNT, "description": "events the backlog cap dropped (the oldest first)"},
        "dropped_last_at": MAYBE_TIMESTAMP, "created_at": TIMESTAMP,
        "secret": text("the whsec_ signing secret: in the answer to the creation only, never again"),
    }, optional=("secret",)),
    "WebhookList": obj({"webhooks": array(ref("Webhook")), "events": {**STRINGS, "description": "every event type"}}),
    "WebhookDeleted": obj({"deleted": ROW_ID}),
    "WebhookDelivery": obj({
        "id": ROW_ID, "endpoint_id": ROW_ID,
        "message_id": text("the webhook-id header: the same on every try"), "event_type": STRING,
        "state": enum("pending", "delivered", "failed"), "attempts": {**COUNT, "description": "tries so far"},
        "next_attempt_at": {**MAYBE_TIMESTAMP, "description": "pending: when it is tried next (after older ones)"},
        "last_attempt_at": MAYBE_TIMESTAMP,
        "last_status": {**MAYBE_INTEGER, "description": "the receiver's HTTP status (null: no answer)"},
        "last_error": MAYBE_STRING, "created_at": TIMESTAMP, "finished_at": MAYBE_TIMESTAMP,
        "payload": obj({"type": STRING, "timestamp": STRING, "data": {"type": "object"}},
                       description="the body every try sends"),
    }),
    "WebhookDeliveries": obj({"webhook": ref("Webhook"), "deliveries": array(ref("WebhookDelivery")), "total": COUNT,
                              "limit": COUNT, "offset": COUNT}),
}


# --- request bodies and operations -------------------------------------------------------------------------------
def json_body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": schema}}}


IMAGE_BODY = {"required": True, "description": "the image file's bytes, JPEG, PNG or WebP (the server reads the image "
                                               "itself, whatever the Content-Type); at most 8 MiB and 40 megapixels",
              "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
JPEG_ANSWER = {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}
BEARER = [{"bearer": []}]
BEARER_OR_NONE = [{}, {"bearer": []}]


@dataclass(frozen=True)
class Operation:
    answer: str | dict[str, Any]  # the component of the 200 body, or the 200 content itself (not JSON)
    body: dict[str, Any] | None = None  # the requestBody
    security: list[dict[str, list[str]]] | None = None  # None: open to anyone
    writes: bool = False  # a write may find the registry's disk full (507)
    query: dict[str, dict[str, Any]] | None = None  # query parameters whose schema differs from QUERY_PARAMETERS'


OPERATIONS: dict[tuple[str, str], Operation] = {
    ("get", "/api/v1/health"): Operation("Health"),
    ("get", "/api/v1/openapi.json"): Operation("OpenAPIDocument"),
    # nodes
    ("get", "/api/v1/servers"): Operation("NodeList"),
    ("delete", "/api/v1/servers/{server_id}"): Operation("NodeDeleted", security=BEARER, writes=True),
    ("post", "/api/v1/servers/{server_id}/models/sync"): Operation(
        "SyncAnswer", json_body(ref("Inventory")), BEARER_OR_NONE, writes=True),
    ("post", "/api/v1/servers/{server_id}/heartbeat"): Operation(
        "HeartbeatAnswer", json_body(obj({"display_name": STRING, "api_url": STRING, "files_url": nullable(STRING),
                                          "state": ref("NodeStateReport")},
                                         ("display_name", "api_url", "files_url", "state")),
                                     required=False), BEARER_OR_NONE, writes=True),
    ("put", "/api/v1/servers/{server_id}/previews/{sha256}"): Operation("PreviewStored", IMAGE_BODY, BEARER, writes=True),
    ("get", "/api/v1/servers/{server_id}/files"): Operation({"anyOf": [ref("NodeFiles"), ref("NodeUnusableFiles")]}),
    ("post", "/api/v1/servers/{server_id}/token"): Operation("TokenIssued", security=BEARER, writes=True),
    # models
    ("get", "/api/v1/models"): Operation("ModelList", query={"update": enum("available")}),
    ("post", "/api/v1/models/scan"): Operation(
        "ScanResult", json_body(obj({"calculate_hashes": {"type": "boolean", "default": False}}, ("calculate_hashes",)),
                                required=False), BEARER_OR_NONE, writes=True),
    ("post", "/api/v1/models/reset-database"): Operation("RegistryReset", security=BEARER, writes=True),
    ("get", "/api/v1/models/{id}/info"): Operation("ModelInfo"),
    ("get", "/api/v1/models/{id}/availability"): Operation("ModelAvailability"),
    ("post", "/api/v1/models/{id}/availability"): Operation(
        "AvailabilityMarked", json_body(obj({
            "server_id": SERVER_ID, "path": text("the file's path on the node (default: rel_name)"),
            "rel_name": text("its name relative to its model folder (default: the model's file name)"),
            "local_name": text("read as rel_name when rel_name is absent"), "role": enum(*ROLES),
        }, ("path", "rel_name", "local_name", "role"))), BEARER_OR_NONE, writes=True),
    ("delete", "/api/v1/models/{id}/availability"): Operation(
        "AvailabilityRemoved", json_body(obj({"server_id": SERVER_ID, "path": STRING}, ("server_id", "path"),
                                             "or as query parameters"), required=False), BEARER_OR_NONE, writes=True),
    ("get", "/api/v1/models/{id}/preview"): Operation(JPEG_ANSWER),
    ("post", "/api/v1/models/{id}/refresh-metadata"): Operation("MetadataRefresh", writes=True),
    ("post", "/api/v1/models/{id}/calculate-hash"): Operation("ModelHashed", security=BEARER_OR_NONE, writes=True),
    ("post", "/api/v1/files/{file_id}/calculate-hash"): Operation("FileHashed", security=BEARER_OR_NONE, writes=True),
    # job checks
    ("post", "/api/v1/jobs/availability"): Operation("JobAvailability", json_body(ref("Job")), BEARER_OR_NONE),
    ("post", "/api/v1/servers/{server_id}/dispatch-check"): Operation(
        "DispatchCheck", json_body(ref("DispatchJob")), BEARER_OR_NONE, writes=True),
    ("post", "/api/v1/checkpoint-verify"): Operation("CheckpointVerify", json_body(obj({
        "civitai_version_id": {"type": ["integer", "string"], "description": "a text that is not a number is read as a hash"},
        "hash": text("SHA256, AutoV2, AutoV1, AutoV3 or a 12-hex short hash"),
        "type": {"type": "string", "default": "checkpoint"},
    }, ("civitai_version_id", "hash", "type"), "civitai_version_id or hash")), BEARER_OR_NONE),
    ("get", "/api/v1/models/wanted"): Operation("WantedList", security=BEARER_OR_NONE),
    # the operator's corrections
    ("patch", "/api/v1/models/{id}"): Operation("Overridden", json_body(obj({
        "name": nullable(STRING), "type": nullable(text("checkpoint, unet, lora, locon, ..., vae, embedding, ...")),
        "base": nullable(text("sd1, sd2, sdxl, flux1, ...")), "trained_words": nullable(STRINGS),
    }, ("name", "type", "base", "trained_words"), "null clears an override")), BEARER, writes=True),
    ("post", "/api/v1/models/{id}/civitai/reject"): Operation("MatchRejected", security=BEARER, writes=True),
    ("get", "/api/v1/admin/check"): Operation("AdminCheck", security=BEARER),
    # transfers
    ("post", "/api/v1/transfers"): Operation("Transfer", json_body(ref("TransferOrder")), BEARER, writes=True),
    ("get", "/api/v1/transfers"): Operation("TransferList", query={"state": enum(*STATES)}),
    ("get", "/api/v1/transfers/{id}"): Operation("Transfer"),
    ("delete", "/api/v1/transfers/{id}"): Operation("Transfer", security=BEARER, writes=True),
    ("post", "/api/v1/transfers/{id}/retry"): Operation("Transfer", security=BEARER, writes=True),
    ("post", "/api/v1/transfers/{id}/progress"): Operation("Transfer", json_body(ref("ProgressReport")), BEARER,
                                                           writes=True),
    ("get", "/api/v1/servers/{server_id}/transfers/orders"): Operation("TransferOrders", security=BEARER, writes=True),
    # --- downloads (#12) ---
    # --- Civitai update checks (#12) ---
    ("post", "/api/v1/models/{id}/update-check"): Operation("UpdateChecked", security=BEARER, writes=True),
    ("post", "/api/v1/models/{id}/update"): Operation("UpdateOrdered", security=BEARER, writes=True),
    # --- node state and ranking (#13) ---
    # --- demand, fleet analytics, recommendations (#13) ---
    ("get", "/api/v1/analytics/demand"): Operation(
        {JSON: {"schema": {"anyOf": [ref("DemandAnswer"), ref("DemandSeries")]}}}, security=BEARER_OR_NONE,
        query={"window": {**enum("24h", "7d", "30d"), "default": "24h"}, "model_id": ROW_ID}),
    ("get", "/api/v1/analytics/fleet"): Operation("FleetAnalytics", security=BEARER_OR_NONE),
    ("get", "/api/v1/servers/{server_id}/recommendations"): Operation("Recommendations", security=BEARER_OR_NONE),
    # --- webhooks (#13) ---
    ("post", "/api/v1/webhooks"): Operation("Webhook", json_body(ref("WebhookNew")), BEARER, writes=True),
    ("get", "/api/v1/webhooks"): Operation("WebhookList", security=BEARER),
    ("delete", "/api/v1/webhooks/{id}"): Operation("WebhookDeleted", security=BEARER, writes=True),
    ("get", "/api/v1/webhooks/{id}/deliveries"): Operation(
        "WebhookDeliveries", security=BEARER, query={"state": enum("pending", "delivered", "failed")}),
    ("post", "/api/v1/webhooks/{id}/deliveries/{delivery_id}/retry"): Operation(
        "WebhookDelivery", security=BEARER, writes=True),
    ("post", "/api/v1/webhooks/{id}/test"): Operation("WebhookDelivery", security=BEARER, writes=True),
}

PATH_PARAMETERS = {"id": {**ROW_ID, "description": "a model's id"}, "file_id": {**ROW_ID, "description": "a file's id"},
                   "server_id": SERVER_ID, "sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
                   "delivery_id": {**ROW_ID, "description": "a webhook delivery's id"}}
_PAGE_SIZE = {"type": "integer", "minimum": 1, "maximum": 500}
QUERY_PARAMETERS = {
    "type": STRING, "base": STRING, "text": STRING, "server": SERVER_ID, "kind": STRING, "path": STRING,
    "server_id": SERVER_ID, "availability": enum("available", "missing", "online", "offline"),
    "sort": enum("name", "type", "base", "size", "created", "updated", "last_used", "id"),
    "order": enum("asc", "desc"), "limit": _PAGE_SIZE, "offset": COUNT, "page": {"type": "integer", "minimum": 1},
    "unhashed": BOOLEAN, "missing_only": {"type": "boolean", "default": True}, "state": enum(*FILE_STATES),
    "wait": {"type": "number", "minimum": 0, "default": 0, "description": "seconds to hold the answer (at most 30)"},
    "running": {"type": "string", "pattern": "^[0-9]*(,[0-9]+)*$", "description": "transfer ids, comma-separated"},
}
# answered by every operation of that kind, whether or not its docstring says so (the docstring's words win)
_BODY_ERRORS = {"400": "the body is not UTF-8 JSON of the expected shape; `field` names the part",
                "413": "the body is over the size limit", "415": "an unsupported Content-Encoding (gzip or none)"}
_WRITE_ERRORS = {"507": "the registry's disk is full; nothing was changed"}
_NODE_ID_ERRORS = {"400": "the server_id in the path is not a node id (1-64 of A-Z a-z 0-9 . _ -)"}
_ANY_ERRORS = {"500": "an unexpected error (a bug; the server logs it)"}
TAGS = {"app": "server", "routes_servers": "nodes", "routes_models": "models", "routes_jobs": "job checks",
        "routes_overrides": "corrections", "routes_transfers": "transfers", "routes_insight": "insight",
        "routes_webhooks": "webhooks"}


# --- the document ------------------------------------------------------------------------------------------------
def _content(answer: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(answer, str):
        return {JSON: {"schema": ref(answer)}}
    if "anyOf" in answer:
        return {JSON: {"schema": answer}}
    return answer


def _operation(route: Route, method: str, path: str, documented: dict[str, Any]) -> dict[str, Any]:
    table = OPERATIONS.get((method, path))
    if table is None:
        raise LookupError(f"{method.upper()} {path} has no entry in server/openapi.py OPERATIONS")
    statuses = {}
    for status, info in documented.pop("responses", {}).items():
        if set(info) != {"description"}:  # e.g. an unquoted comma in a flow mapping: `{description: a, b}`
            raise ValueError(f"{method.upper()} {path} {status}: a response in a docstring is {{description: ...}}, not {info}")
        statuses[str(status)] = info["description"]
    if not any(status.startswith("2") for status in statuses):
        raise LookupError(f"{method.upper()} {path}: its docstring lists no 2xx answer")
    if table.body is not None:
        statuses = {**_BODY_ERRORS, **statuses}
    if table.writes:
        statuses = {**_WRITE_ERRORS, **statuses}
    if "server_id" in route.param_convertors:
        statuses = {**_NODE_ID_ERRORS, **statuses}
    statuses = {**_ANY_ERRORS, **statuses}
    responses = {
        status: {"description": description, "content": _content(table.answer) if status.startswith("2") else
                 {JSON: {"schema": ref("Error")}}}
        for status, description in sorted(statuses.items())
    }
    parameters = [{"name": name, "in": "path", "required": True, "schema": PATH_PARAMETERS[name]}
                  for name in route.param_convertors]
    for parameter in documented.pop("parameters", []):
        schemas = {**QUERY_PARAMETERS, **(table.query or {})}
        parameters.append({**parameter, "schema": schemas[parameter["name"]]})
    operation = {"operationId": route.endpoint.__name__, "tags": [TAGS[route.endpoint.__module__.rsplit(".", 1)[-1]]],
                 **documented, "responses": responses}
    if parameters:
        operation["parameters"] = parameters
    if table.body is not None:
        operation["requestBody"] = table.body
    if table.security is not None:
        operation["security"] = table.security
    return operation


def build_document(routes: list[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI document of every route under /api/ (the dashboard's HTML pages are not part of it)."""
    docstrings = BaseSchemaGenerator()  # its docstring parser: the YAML after `---`
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route) or not route.include_in_schema or not route.path.startswith("/api/"):
            continue
        path = _CONVERTOR.sub("}", route.path)
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            documented = docstrings.parse_docstring(route.endpoint)
            paths.setdefault(path, {})[method.lower()] = _operation(route, method.lower(), path, documented)
    ids = [op["operationId"] for ops in paths.values() for op in ops.values()]
    if len(ids) != len(set(ids)):
        raise ValueError(f"operationIds repeat: {sorted(i for i in ids if ids.count(i) > 1)}")
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "modelsync central server",
            "version": modelsync.__version__,
            "description": f"API version {API_VERSION} (every path starts with /api/v{API_VERSION}); the document's "
                           f"version is the modelsync release. Errors are `Error` objects. Guide: docs/api.md.",
            "license": {"name": "MIT", "identifier": "MIT"},
            "x-api-version": API_VERSION,
        },
        "tags": [{"name": name} for name in dict.fromkeys(TAGS.values())],
        "paths": paths,
        "components": {
            "schemas": COMPONENTS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "a node's token, the admin token or the queue token"}},
        },
    }
