"""The central server's transfer orders, framework-free over the registry: ordering and managing transfers
(`ordering`), what a destination node should fetch now with fresh grants (`orders`), what it reports and what a
transfer becomes (`progress`: the state table), which nodes can serve (`sources`), and the long-polls' wake-ups
(`signals`). Grants are made per order and never stored, listed or logged."""
from .orders import orders_for
from .ordering import cancel, get_transfer, list_transfers, order_transfer, retry
from .progress import clear_exclusions_after_sync, report_progress
from .records import ACTIVE_STATES, STATES, Order, OrderSource, Transfer, TransferPage
from .signals import OrderSignals
from .sources import set_files_url

__all__ = [
    "ACTIVE_STATES", "STATES", "Order", "OrderSignals", "OrderSource", "Transfer", "TransferPage", "cancel",
    "clear_exclusions_after_sync", "get_transfer", "list_transfers", "order_transfer", "orders_for", "report_progress",
    "retry", "set_files_url",
]
