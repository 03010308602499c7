"""The node engine as the extension runs it (shared/node/service.py, shared with `modelsync node`): the host's
settings mapped into the engine's, and the host's model folders as its roots."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..shared.node import service as engine
from ..shared.node.service import (  # noqa: F401  (what the tab and the tests name)
    ANSWERED,
    NO_ANSWER,
    NOT_CONTACTED,
    REFUSED,
    PushStatus,
    ScanState,
    Schedule,
    Timeouts,
)
from ..shared.records import Root
from .settings import NodeSettings


class NodeService(engine.NodeService):
    def __init__(self, data_path: Path, settings: Callable[[], NodeSettings], roots: Callable[[list[str]], list[Root]],
                 **options):
        super().__init__(data_path, lambda: settings().node_config(), lambda: roots(settings().extra_root_list), **options)
        self._host_settings = settings

    def settings(self) -> NodeSettings:
        """The host's settings as the tab shows them."""
        return self._host_settings()
