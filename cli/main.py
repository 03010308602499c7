"""modelsync: which Stable Diffusion model is on which Forge/A1111 node.

Each command is a thin face of the library; the modules behind them are imported only when the command runs, so
`--help`, `--version` and `hash` start at once."""
from __future__ import annotations

import argparse
import importlib
import logging
import socket
import sys

from modelsync import __version__
from modelsync.shared.records import DEFAULT_MAX_HASH_SIZE, ROLES

from .errors import CliError


def _role_root(text: str):
    from modelsync.shared.records import Root

    kind, sep, folder = text.partition("=")
    if not sep or kind not in ROLES or not folder:
        raise argparse.ArgumentTypeError(f"expected KIND=DIR with KIND one of {', '.join(ROLES)}, got {text!r}")
    import os

    return Root(os.path.abspath(folder), kind)


def _size(text: str) -> int:
    from modelsync.shared.units import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def _rate(text: str) -> int:
    """Bytes per second: `50MB/s`, `50MB` or `52428800`."""
    return _size(text[:-2] if text.lower().endswith("/s") else text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400 * 7:
        raise argparse.ArgumentTypeError(f"must be a number of seconds from 0 to a week, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 1-65535, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """One line, not the usage block."""
        if message.endswith("expected one argument"):  # none given, or one starting with "-" taken for an option
            message += " (a value that starts with \"-\" is given as --option=VALUE)"
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="log every file's decisions (and the INFO lines)")
    parser = _Parser(prog="modelsync", description=__doc__.split("\n\n")[0], parents=[common])
    parser.set_defaults(verbose=0)
    parser.add_argument("--version", action="version", version=f"modelsync {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        p.set_defaults(func=func)
        return p

    def node_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", default=None, help="the node's folder (default: $CONFIG_DATA_PATH, else the user's data "
                                                   "folder, e.g. ~/.local/share/modelsync)")
        p.add_argument("--server-id", default=socket.gethostname(), help="this node's id (default: host name)")

    def server_options(p: argparse.ArgumentParser, token_help: str) -> None:
        p.add_argument("--server", default=None, metavar="URL", help="the central server (default: $MODELSYNC_SERVER)")
        p.add_argument("--token", default=None, help=token_help)
        p.add_argument("--json", action="store_true", help="the server's answer as JSON")

    p = command("scan", "local:cmd_scan", "scan model folders into the node's catalog (and push it)")
    p.add_argument("roots", nargs="*", metavar="ROOT", help="a folder; a Forge/A1111 models/ folder maps its sub-folders to roles")
    p.add_argument("--role", action="append", default=[], type=_role_root, metavar="KIND=DIR", help="a folder with a role")
    p.add_argument("--hash", action="store_true", help="calculate hashes of new and changed files")
    p.add_argument("--json", action="store_true", help="print the full result as JSON, with every file's record")
    p.add_argument("--workers", type=_positive, default=None, help="files hashed in parallel (default: CPU count)")
    p.add_argument("--max-size", type=_size, default=DEFAULT_MAX_HASH_SIZE, metavar="SIZE",
                   help="skip hashing files over this size: bytes or 15GB, 1.5GiB ... (default: 15GB)")
    node_options(p)
    p.add_argument("--display-name", default=None)
    p.add_argument("--api-url", default=None, help="where the job queue reaches this node's A1111 API")
    p.add_argument("--push", metavar="URL", default=None, help="push the inventory to this central server")
    p.add_argument("--token", default=None, help="this node's push token (default: $MODELSYNC_TOKEN, or the one stored at "
                                                "registration); stored once the server accepts it")
    p.add_argument("--forget-missing", action="store_true",
                   help="drop the catalog's files under folders that cannot be read now (by default they are kept, "
                        "flagged unreachable, and the command exits 1)")

    p = command("node", "node:cmd_node", "run this machine as a node without Forge: scan, push, heartbeat, re-scan "
                "after changes, take transfers, serve files to peers (until SIGINT/SIGTERM)")
    p.add_argument("roots", nargs="*", metavar="ROOT", help="a folder; a Forge/A1111 models/ folder maps its sub-folders to roles")
    p.add_argument("--role", action="append", default=[], type=_role_root, metavar="KIND=DIR", help="a folder with a role")
    p.add_argument("--server", required=True, metavar="URL", help="the central server")
    node_options(p)
    p.add_argument("--token", default=None, help="this node's token (default: $MODELSYNC_TOKEN, or the one stored at "
                                                "registration)")
    p.add_argument("--display-name", default=None)
    p.add_argument("--api-url", default=None, help="where the job queue reaches this node's A1111 API")
    p.add_argument("--listen", default="127.0.0.1:8189", metavar="HOST:PORT",
                   help="the file server for peers (default: 127.0.0.1:8189, loopback only)")
    p.add_argument("--files-url", default=None, metavar="URL",
                   help="the base URL peers fetch this node's files from (default: http://HOST:PORT of --listen)")
    p.add_argument("--heartbeat", type=_seconds, default=60, metavar="SECONDS", help="0: none (default: 60)")
    p.add_argument("--rescan", type=_seconds, default=600, metavar="SECONDS", help="timed re-scan, 0: none (default: 600)")
    p.add_argument("--no-watch", action="store_true", help="no re-scan after changes in the folders, the timer only")
    p.add_argument("--max-transfers", type=_positive, default=2, metavar="N", help="transfers at a time (default: 2)")
    p.add_argument("--bandwidth", type=_rate, default=0, metavar="BYTES/S", help="per transfer: 50MB/s, 1GiB/s ... (default: unlimited)")
    p.add_argument("--free-floor", type=_size, default=2 * 1024**3, metavar="SIZE",
                   help="free disk space a transfer leaves (default: 2GiB)")
    p.add_argument("--max-size", type=_size, default=DEFAULT_MAX_HASH_SIZE, metavar="SIZE",
                   help="skip hashing files over this size (default: 15GB)")
    p.add_argument("--no-serve", action="store_true", help="serve no files to peers")
    p.add_argument("--no-receive", action="store_true", help="take no transfers to this node")

    p = command("hash", "local:cmd_hash", "print every hash of files (SHA256, AutoV2, AutoV1, AutoV3)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true")

    p = command("models", "local:cmd_models", "list the files in this node's catalog")
    for name, help_text in (("--type", "what the content is: checkpoint, lora, vae, ..."), ("--base", "sd1, sdxl, flux1, ..."),
                            ("--role", "the folder's role"), ("--text", "a part of the name or relative name")):
        p.add_argument(name, default=None, help=help_text)
    p.add_argument("--unhashed", action="store_true", help="only files not hashed yet")
    p.add_argument("--duplicates", action="store_true", help="only files whose content is at another path too")
    p.add_argument("--problems", action="store_true", help="only broken or unreachable files, or those with a problem")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true")
    output.add_argument("--csv", action="store_true")
    node_options(p)

    p = command("show", "local:cmd_show", "everything the catalog knows of a file: hashes, fields and their sources")
    p.add_argument("ref", metavar="FILE|SHA256|AUTOV2")
    p.add_argument("--json", action="store_true")
    node_options(p)

    reader_token = "the queue or admin token when the server asks for one (default: $MODELSYNC_QUEUE_TOKEN)"
    fleet = sub.add_parser("fleet", parents=[common], help="what the central server knows: nodes, models, transfers, "
                           "updates, demand, risks, recommendations")
    fleet_sub = fleet.add_subparsers(dest="fleet_command", required=True, metavar="COMMAND")

    def fleet_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = fleet_sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func="remote:cmd_fleet", what=name)
        server_options(p, reader_token)
        return p

    fleet_command("nodes", "every node: online, counts, loaded checkpoint, busy/idle, free disk")
    p = fleet_command("models", "the registry's models")
    p.add_argument("--type", default=None, help="only this type")
    p.add_argument("--text", default=None, help="a part of the name")
    p.add_argument("--limit", type=_positive, default=100)
    p = fleet_command("wanted", "models jobs asked for that no node had, most requested first")
    p.add_argument("--limit", type=_positive, default=100)
    p = fleet_command("transfers", "transfers, newest first")
    p.add_argument("--state", default=None, help="queued, running, waiting_source, verifying, done, failed, cancelled")
    p.add_argument("--node", default=None, metavar="NODE_ID", help="only transfers to this node")
    p.add_argument("--limit", type=_positive, default=100)
    p = fleet_command("updates", "models with a newer Civitai version")
    p.add_argument("--limit", type=_positive, default=100)
    p = fleet_command("demand", "how often job checks named each model: requests, unmet, holders, trend, forecast")
    p.add_argument("--window", choices=("24h", "7d", "30d"), default="24h")
    p.add_argument("--kind", default=None, help="checkpoint, lora, vae, embedding, ...")
    p.add_argument("--limit", type=_positive, default=100)
    fleet_command("risks", "models on a single node, unmet demand, cold models, each node's free disk")
    p = fleet_command("recommendations", "models to place on a node and models it could drop")
    p.add_argument("node_id", metavar="NODE_ID")

    def admin_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--server", default=None, metavar="URL", help="the central server (default: $MODELSYNC_SERVER)")
        p.add_argument("--admin-token", default=None, help="the admin token (default: $MODELSYNC_ADMIN_TOKEN)")
        p.add_argument("--json", action="store_true", help="the server's answer as JSON")

    transfer = sub.add_parser("transfer", parents=[common], help="order, cancel or retry a copy of a model to a node "
                              "(admin token)")
    transfer_sub = transfer.add_subparsers(dest="transfer_command", required=True, metavar="COMMAND")
    p = transfer_sub.add_parser("order", parents=[common], help="order a model onto a node: from a peer, Civitai or a URL",
                                description="Order a model onto a node. A URL's query (it may hold a token) is sent to "
                                            "the server and never printed.")
    p.set_defaults(func="orders:cmd_transfer_order")
    p.add_argument("node_id", metavar="NODE_ID", help="the destination node")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", metavar="SHA256", help="a model the registry knows (its SHA256, or its id)")
    what.add_argument("--civitai-version-id", type=_positive, metavar="ID", help="a Civitai model version")
    what.add_argument("--url", metavar="URL", help="an http(s) URL (with --sha256)")
    p.add_argument("--file-id", type=_positive, metavar="ID", help="with --civitai-version-id: the file (default: "
                                                                  "the version's primary file)")
    p.add_argument("--sha256", metavar="HEX", help="with --url: the file's expected SHA256 (required)")
    p.add_argument("--role", choices=ROLES, default=None, help="with --url: the folder it goes to (required when the "
                                                               "registry does not know the model's type)")
    p.add_argument("--source", choices=("auto", "peer", "civitai", "url"), default=None, help="default: auto")
    p.add_argument("--from", dest="from_node", metavar="NODE_ID", default=None, help="the only peer to copy from")
    admin_options(p)
    for name, help_text in (("cancel", "cancel a transfer (the node keeps its temp file: a retry resumes)"),
                            ("retry", "queue a failed or cancelled transfer again")):
        p = transfer_sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=f"orders:cmd_transfer_{name}")
        p.add_argument("transfer_id", type=_positive, metavar="ID")
        admin_options(p)

    webhook = sub.add_parser("webhook", parents=[common], help="signed webhooks for fleet events (admin token)")
    webhook_sub = webhook.add_subparsers(dest="webhook_command", required=True, metavar="COMMAND")

    def webhook_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = webhook_sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=f"orders:cmd_webhook_{name}")
        admin_options(p)
        return p

    p = webhook_command("add", "add an endpoint; its signing secret is printed this once")
    p.add_argument("url", metavar="URL")
    p.add_argument("--events", default="*", help="comma-separated event types, or * for every one (default: *)")
    p.add_argument("--description", default=None, metavar="TEXT")
    webhook_command("list", "every endpoint, with its backlog (never its secret)")
    p = webhook_command("deliveries", "an endpoint's delivery log, newest first")
    p.add_argument("webhook_id", type=_positive, metavar="ID")
    p.add_argument("--state", choices=("pending", "delivered", "failed"), default=None)
    p.add_argument("--limit", type=_positive, default=50)
    p = webhook_command("retry", "send a delivery again")
    p.add_argument("webhook_id", type=_positive, metavar="ID")
    p.add_argument("delivery_id", type=_positive, metavar="DELIVERY_ID")
    p = webhook_command("test", "send a webhook.test event now (exit 1 when the receiver did not take it)")
    p.add_argument("webhook_id", type=_positive, metavar="ID")
    p = webhook_command("remove", "delete an endpoint, its undelivered events and its log")
    p.add_argument("webhook_id", type=_positive, metavar="ID")

    job = sub.add_parser("job", help="the job checks a queue makes", parents=[common])
    job_sub = job.add_subparsers(dest="job_command", required=True, metavar="COMMAND")
    p = job_sub.add_parser("check", parents=[common], help="can a job run, where, and in which node's names",
                           description="Without --node: the pre-submission check. With --node: the pre-dispatch check, "
                                       "whose payload is the job in that node's names. Exit 0 when it can run.")
    p.set_defaults(func="remote:cmd_job_check")
    p.add_argument("job", metavar="JOB_FILE|-", help="an A1111/Forge API body (JSON), an infotext, a StableQueue job")
    p.add_argument("--node", default=None, help="the node the queue would send it to")
    p.add_argument("--record", action="store_true", help="count it for the most-wanted list (a look only by default)")
    server_options(p, reader_token)

    token = sub.add_parser("token", help="node tokens", parents=[common])
    token_sub = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    p = token_sub.add_parser("issue", parents=[common], help="issue (or reset) a node's token and print it")
    p.set_defaults(func="remote:cmd_token_issue")
    p.add_argument("node_id", metavar="NODE_ID")
    p.add_argument("--data", default=None, help="the server's data folder (default: $CONFIG_DATA_PATH, else ./data)")
    p.add_argument("--server", default=None, metavar="URL", help="ask a running server instead (needs the admin token)")
    p.add_argument("--admin-token", default=None, help="with --server (default: $MODELSYNC_ADMIN_TOKEN)")
    p.add_argument("--json", action="store_true")

    p = command("backup", "serve:cmd_backup", "copy the central server's live registry (safe while it runs)")
    p.add_argument("--data", default=None, help="the server's data folder (default: $CONFIG_DATA_PATH, else ./data)")
    p.add_argument("--to", default=None, metavar="FOLDER", help="where the copy goes (default: DATA/backups)")

    p = command("serve", "serve:cmd_serve", "run the central server (SQLite in $CONFIG_DATA_PATH, default ./data)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: loopback only)")
    p.add_argument("--port", type=_port, default=8188)
    return parser


def _configure_logging(verbose: int) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("urllib3").setLevel(logging.ERROR)  # its retry warnings say nothing the final error does not


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    module, function = args.func.split(":")
    command = " ".join(filter(None, (args.command, getattr(args, f"{args.command}_command", None))))
    try:
        return getattr(importlib.import_module(f"modelsync.cli.{module}"), function)(args)
    except CliError as exc:
        print(f"modelsync {command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"modelsync {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
