"""Each thread has its own registry connection (Registry.db() is per thread): a connection taken on the event loop's
thread and handed to run_in_threadpool would be shared by every request in the pool at once, so one request's write
transaction would silently take in another's statements. Read from the server's source: no call of run_in_threadpool
evaluates registry.db() in its arguments (a lambda takes it in the worker's thread). Once the registry is closed at
the server's stop, a thread still running opens no new connection that nobody would close."""
from __future__ import annotations

import ast
import sqlite3
import threading
from pathlib import Path

import pytest

from modelsync.server.registry import Registry

SERVER = Path(__file__).resolve().parent.parent / "server"


def _registry_db_calls(node: ast.AST) -> list[ast.Call]:
    """Calls of `<...>.registry.db()` evaluated where `node` is, not inside a lambda or a nested function."""
    found: list[ast.Call] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute) and child.func.attr == "db" \
                and isinstance(child.func.value, ast.Attribute) and child.func.value.attr == "registry":
            found.append(child)
        found += _registry_db_calls(child)
    return found


def _threadpool_calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and (node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")) == "run_in_threadpool"]


def test_no_event_loop_connection_is_handed_to_a_worker_thread():
    sources = sorted(SERVER.rglob("*.py"))
    calls = 0
    offenders = []
    for source in sources:
        tree = ast.parse(source.read_text(encoding="utf-8"), str(source))
        for call in _threadpool_calls(tree):
            calls += 1
            offenders += [f"{source.relative_to(SERVER.parent)}:{call.lineno}"
                          for argument in [*call.args, *(k.value for k in call.keywords)]
                          if _registry_db_calls(ast.Expression(argument))]
    assert calls > 10  # the server's routes were read
    assert offenders == []



def test_after_close_no_thread_opens_a_connection_and_the_open_ones_are_closed(tmp_path):
    registry = Registry(tmp_path / "registry.db", tmp_path / "backups")
    registry.open()
    own = registry.db()
    assert registry.db() is own
    in_thread: list[object] = []
    worker = threading.Thread(target=lambda: in_thread.append(registry.db()))
    worker.start()
    worker.join()
    assert in_thread[0] is not own  # one connection per thread
    registry.close()
    with pytest.raises(sqlite3.ProgrammingError):
        own.conn.execute("SELECT 1")
    late: list[BaseException] = []

    def outliving_the_stop() -> None:
        try:
            registry.db()
        except sqlite3.ProgrammingError as exc:
            late.append(exc)

    worker = threading.Thread(target=outliving_the_stop)
    worker.start()
    worker.join()
    assert len(late) == 1 and "closed" in str(late[0])
