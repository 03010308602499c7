import sys
from pathlib import Path

import pytest

# Test helpers live beside the tests as plain modules (support_*.py, model_factory.py).
sys.path.insert(0, str(Path(__file__).parent))

from support_server import ANSWERS, check_answers, openapi_document, recording_answers

# Every JSON answer a test receives from a real server must match its operation in the OpenAPI document
# (server/openapi.py): checked after each test, and once more at the end for what fixtures received after the last.
MISMATCHES_SHOWN = 10
_recording = recording_answers()
_late: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    _recording.__enter__()


def pytest_unconfigure(config: pytest.Config) -> None:
    _recording.__exit__(None, None, None)


def _report(problems: list[str]) -> str:
    listed = "\n".join(f"  {p}" for p in problems[:MISMATCHES_SHOWN])
    more = f"\n  ... and {len(problems) - MISMATCHES_SHOWN} more" if len(problems) > MISMATCHES_SHOWN else ""
    return f"{len(problems)} answer(s) from the server do not match the OpenAPI document:\n{listed}{more}"


@pytest.fixture(autouse=True)
def _answers_match_the_openapi_document():
    yield
    problems = check_answers(ANSWERS.take())
    if problems:
        pytest.fail(_report(problems), pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _late.extend(check_answers(ANSWERS.take()))
    if _late and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if ANSWERS.validated or ANSWERS.not_json or _late:
        terminalreporter.write_line(f"OpenAPI: {ANSWERS.validated} JSON answers from the server matched the document "
                                    f"({len(ANSWERS.seen)} operation/status pairs; {ANSWERS.not_json} answers not JSON)")
        if config.getoption("verbose") > 0:
            document = openapi_document()
            unseen = [f"{method.upper()} {path}" for path, operations in document["paths"].items()
                      for method, operation in operations.items() if f"{method} {path} 200" not in ANSWERS.seen
                      and "application/json" in operation["responses"]["200"]["content"]]
            terminalreporter.write_line(f"OpenAPI: JSON operations whose 200 answer no test checked: {', '.join(unseen) or 'none'}")
    if _late:
        terminalreporter.write_line(_report(_late), red=True)
