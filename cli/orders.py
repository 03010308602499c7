"""The admin's orders to the central server: transfers (order, cancel, retry) and webhooks (add, list, deliveries, retry,
test, remove). Every one needs the admin token; what is printed is the server's answer, which never shows a URL's
query or, after its creation, a webhook's secret."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from .errors import CliError
from .fleet_tables import DELIVERY_COLUMNS, TRANSFER_COLUMNS, WEBHOOK_COLUMNS, transfer_row, webhook_row
from .output import print_json, print_table
from .remote import admin_client, ask_admin


def _order_body(args: argparse.Namespace) -> dict[str, Any]:
    """The order as POST /api/v1/transfers takes it; options that go with another kind of order are usage errors."""
    if args.file_id is not None and args.civitai_version_id is None:
        raise CliError("--file-id goes with --civitai-version-id", 2)
    if args.url is None and (args.sha256 is not None or args.role is not None):
        raise CliError("--sha256 and --role go with --url", 2)
    if args.url is not None and args.sha256 is None:
        raise CliError("an order by --url needs the file's --sha256 (nothing else could verify the download)", 2)
    body: dict[str, Any] = {"server_id": args.node_id}
    if args.model is not None and args.model.isdigit() and len(args.model) < 19:  # a model id, not a SHA256
        body["model_id"] = int(args.model)
    elif args.model is not None:
        body["sha256"] = args.model.lower()
    elif args.civitai_version_id is not None:
        body["civitai_version_id"] = args.civitai_version_id
        if args.file_id is not None:
            body["file_id"] = args.file_id
    else:
        body.update(url=args.url, sha256=args.sha256.lower())
        if args.role is not None:
            body["role"] = args.role
    if args.source is not None:
        body["source"] = args.source
    if args.from_node is not None:
        body["from_server_id"] = args.from_node
    return body


def _print_transfer(args: argparse.Namespace, transfer: dict[str, Any]) -> None:
    if args.json:
        print_json(transfer)
    else:
        print_table([transfer_row(transfer)], TRANSFER_COLUMNS)


def cmd_transfer_order(args: argparse.Namespace) -> int:
    body = _order_body(args)
    client = admin_client(args, "ordering a transfer")
    _print_transfer(args, ask_admin(client.post_json, "api/v1/transfers", body))
    return 0


def cmd_transfer_cancel(args: argparse.Namespace) -> int:
    client = admin_client(args, "cancelling a transfer")
    _print_transfer(args, ask_admin(client.delete_json, f"api/v1/transfers/{args.transfer_id}"))
    return 0


def cmd_transfer_retry(args: argparse.Namespace) -> int:
    client = admin_client(args, "retrying a transfer")
    _print_transfer(args, ask_admin(client.post_json, f"api/v1/transfers/{args.transfer_id}/retry", {}))
    return 0


def cmd_webhook_add(args: argparse.Namespace) -> int:
    events = [e.strip() for e in args.events.split(",") if e.strip()]
    body = {"url": args.url, "events": events, **({"description": args.description} if args.description else {})}
    answer = ask_admin(admin_client(args, "adding a webhook").post_json, "api/v1/webhooks", body)
    if args.json:
        print_json(answer)
        return 0
    print_table([webhook_row(answer)], WEBHOOK_COLUMNS)
    print(f"secret: {answer['secret']}")
    print("the secret is shown this once: give it to the receiver now (it verifies the webhook-signature with it)",
          file=sys.stderr)
    return 0


def cmd_webhook_list(args: argparse.Namespace) -> int:
    answer = ask_admin(admin_client(args, "listing webhooks").get_json, "api/v1/webhooks")
    if args.json:
        print_json(answer)
    else:
        print_table([webhook_row(w) for w in answer["webhooks"]], WEBHOOK_COLUMNS, empty="no webhooks")
    return 0


def cmd_webhook_deliveries(args: argparse.Namespace) -> int:
    params = {"limit": args.limit, **({"state": args.state} if args.state else {})}
    client = admin_client(args, "reading a webhook's deliveries")
    answer = ask_admin(client.get_json, f"api/v1/webhooks/{args.webhook_id}/deliveries", params)
    if args.json:
        print_json(answer)
        return 0
    webhook = answer["webhook"]
    print(f"webhook {webhook['id']} {webhook['url']}: {'enabled' if webhook['enabled'] else 'disabled'}, "
          f"backlog {webhook['backlog']}, dropped {webhook['dropped']}")
    print_table(answer["deliveries"], DELIVERY_COLUMNS, empty="no deliveries")
    if answer["total"] > len(answer["deliveries"]):
        print(f"({len(answer['deliveries'])} of {answer['total']}: --limit shows more)")
    return 0


def _print_delivery(args: argparse.Namespace, delivery: dict[str, Any]) -> None:
    if args.json:
        print_json(delivery)
    else:
        print_table([delivery], DELIVERY_COLUMNS)


def cmd_webhook_retry(args: argparse.Namespace) -> int:
    client = admin_client(args, "retrying a webhook delivery")
    _print_delivery(args, ask_admin(client.post_json,
                                    f"api/v1/webhooks/{args.webhook_id}/deliveries/{args.delivery_id}/retry", {}))
    return 0


def cmd_webhook_test(args: argparse.Namespace) -> int:
    """Exit 0 when the receiver took the test event, 1 when it did not (its answer is printed either way)."""
    delivery = ask_admin(admin_client(args, "testing a webhook").post_json, f"api/v1/webhooks/{args.webhook_id}/test", {})
    _print_delivery(args, delivery)
    return 0 if delivery["state"] == "delivered" else 1


def cmd_webhook_remove(args: argparse.Namespace) -> int:
    client = admin_client(args, "removing a webhook")
    answer = ask_admin(client.delete_json, f"api/v1/webhooks/{args.webhook_id}")
    if args.json:
        print_json(answer)
    else:
        print(f"webhook {answer['deleted']} removed")
    return 0
