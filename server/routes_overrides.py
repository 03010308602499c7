"""The operator's corrections (admin token): overriding a model's name, type, base and trained words, rejecting a
wrong Civitai match, and the check the dashboard makes when the operator enters the admin token. Removing a stale
availability row is `DELETE /api/v1/models/{id}/availability` with the admin token."""
from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from modelsync.shared.catalog import write_transaction

from . import queries
from .auth import require_admin
from .body import expect_object, read_json
from .civitai_state import reject_match
from .context import context
from .overrides import apply_changes, parse_changes
from .registry import RowIdConvertor  # noqa: F401  (registers {id:rowid}, used by ROUTES)


async def override_model(request: Request) -> JSONResponse:
    """Set or clear a model's overrides (admin).
    ---
    summary: Override a model's name, type, base or trained words; null clears an override
    description: >
      An override wins over every source and is never overwritten by a later sync, scan or Civitai lookup; its field
      source is `manual`. Clearing one empties the field until the next sync of a node holding the model fills it.
    responses:
      200: {description: "the overrides, and the model as GET /api/v1/models/{id}/info"}
      400: {description: "an unknown field or a bad value, named in `field`"}
      401: {description: no admin token}
      403: {description: not the admin token}
      404: {description: no such model}
    """
    ctx = context(request)
    require_admin(request, ctx.admin_token)
    changes = parse_changes(expect_object(await read_json(request, ctx.config.max_request_bytes, ctx.config.max_decompressed_bytes)))
    model_id = request.path_params["id"]

    def work() -> dict[str, Any]:
        db = ctx.registry.db()
        overrides = apply_changes(db, model_id, changes)
        return {"model_id": model_id, "overrides": overrides, "model": queries.model_info(db, ctx.liveness, model_id)}

    return JSONResponse(await run_in_threadpool(work))


async def reject_civitai_match(request: Request) -> JSONResponse:
    """Mark a model's Civitai match wrong (admin).
    ---
    summary: Reject the model's Civitai match; its fields are cleared and that version is never applied to it again
    description: >
      Clears the Civitai columns and every field a Civitai source (API or sidecar) filled, except overrides; the type
      and base fall back to what the files' content says; the stored preview is dropped. The rejected version id is
      recorded: neither the Civitai worker nor a node's Civitai sidecar fills this model from it again.
    responses:
      200: {description: the fields cleared and the model after}
      401: {description: no admin token}
      403: {description: not the admin token}
      404: {description: no such model}
      409: {description: the model has no Civitai match}
    """
    ctx = context(request)
    require_admin(request, ctx.admin_token)
    model_id = request.path_params["id"]

    def work() -> dict[str, Any]:
        db = ctx.registry.db()
        with write_transaction(db):  # the preview's row and file go together (see server/previews.py)
            version_id, cleared = reject_match(db, model_id)
            model = queries.model_info(db, ctx.liveness, model_id)
            ctx.previews.path(model["hash_sha256"]).unlink(missing_ok=True)
        return {"model_id": model_id, "rejected_version_id": version_id, "cleared": sorted(cleared), "model": model}

    return JSONResponse(await run_in_threadpool(work))


def admin_check(request: Request) -> JSONResponse:
    """Is this the admin token.
    ---
    summary: 200 when the request carries the admin token (the dashboard asks once when the operator enters it)
    responses:
      200: {description: it is the admin token}
      401: {description: no admin token}
      403: {description: not the admin token}
    """
    require_admin(request, context(request).admin_token)
    return JSONResponse({"admin": True})


ROUTES = [
    Route("/api/v1/models/{id:rowid}", override_model, methods=["PATCH"]),
    Route("/api/v1/models/{id:rowid}/civitai/reject", reject_civitai_match, methods=["POST"]),
    Route("/api/v1/admin/check", admin_check, methods=["GET"]),
]
