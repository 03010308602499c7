"""Every error the API returns is JSON: {"error": "what went wrong", "field": "which part of the request"}.

A write that fails because the registry's disk (or its page limit) is full is a 507, and the registry notes it
for /api/v1/health; any other unexpected error is a 500."""
from __future__ import annotations

import sqlite3

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from modelsync.shared.inventory import InventoryError
from modelsync.shared.jobs.requirements import JobFormatError

from .registry import DISK_FULL, is_disk_full


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers


def error_response(status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.field, exc.headers)


async def _inventory_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InventoryError)
    return error_response(400, exc.message, exc.field)


async def _job_format_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, JobFormatError)
    return error_response(400, exc.message, exc.field)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), None, exc.headers)


async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
    if not is_disk_full(exc):
        raise exc  # unexpected: answered 500 (and logged) by `_unexpected`
    # the write was rolled back; the same request succeeds once there is room again
    request.app.state.modelsync.registry.note_disk_full(exc)
    return error_response(507, DISK_FULL, None)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # uvicorn logs the traceback: Starlette re-raises after this answer is sent
    return error_response(500, f"internal error: {type(exc).__name__}")


EXCEPTION_HANDLERS = {
    ApiError: _api_error,
    InventoryError: _inventory_error,
    JobFormatError: _job_format_error,
    HTTPException: _http_error,
    sqlite3.Error: _storage_error,
    OSError: _storage_error,
    Exception: _unexpected,
}
