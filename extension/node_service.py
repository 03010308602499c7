"""The node engine the extension runs; it lives in shared/node/service.py, shared with `modelsync node`."""
from ..shared.node.service import (  # noqa: F401
    ANSWERED, NO_ANSWER, NOT_CONTACTED, REFUSED, NodeService, PushStatus, Schedule, ScanState, Timeouts,
)
