"""What every request handler reaches through `context(request)`: configuration, registry, tokens, workers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from .config import ServerConfig
from .own_node import OwnNode
from .previews import PreviewStore
from .queries import Liveness
from .registry import Registry
from .transfers import OrderSignals

if TYPE_CHECKING:
    from .civitai_worker import CivitaiWorker


@dataclass
class ServerContext:
    config: ServerConfig
    registry: Registry
    admin_token: str
    liveness: Liveness
    own_node: OwnNode
    previews: PreviewStore
    worker: "CivitaiWorker | None" = None
    signals: OrderSignals = field(default_factory=OrderSignals)  # wakes the nodes' long-polls for transfer orders
    # set by the background services' start (server/app.py BACKGROUND); None when off
    update_checks: Any = None  # server/civitai_updates.py
    demand: Any = None  # server/insight/demand.py
    webhooks: Any = None  # server/webhooks/service.py


def context(request: Request) -> ServerContext:
    return request.app.state.modelsync
