"""The OpenAPI document: valid per openapi-spec-validator, complete (every API route, every body with its required
fields), and the check every answer of the test suite goes through (tests/conftest.py) really fails a wrong one."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from starlette.routing import Route

import modelsync
from modelsync.server.openapi import build_document
from support_server import AnswerLog, api_routes, central_server, check_answers, json_stub, recording_answers  # noqa: F401

TESTS = Path(__file__).parent


def _api_operations() -> set[tuple[str, str]]:
    return {(method.lower(), re.sub(r":\w+}", "}", route.path)) for route in api_routes()
            if isinstance(route, Route) and route.path.startswith("/api/") for method in route.methods - {"HEAD"}}


def _resolve(document: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def test_the_served_document_is_valid_openapi_with_the_release_and_api_version(central_server):
    document = central_server.get("/api/v1/openapi.json").json()
    validate(document)  # raises on any violation of the OpenAPI 3.1 specification
    assert document["openapi"] == "3.1.0"
    assert document["info"]["version"] == modelsync.__version__
    assert document["info"]["x-api-version"] == "1"
    operations = {(method, path) for path, ops in document["paths"].items() for method in ops}
    assert operations == _api_operations() and len(operations) == 45
    assert not any(path.startswith("/dashboard") for path in document["paths"])


def test_every_operation_describes_its_bodies_with_required_fields(central_server):
    document = central_server.get("/api/v1/openapi.json").json()
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "field"] and error["additionalProperties"] is False
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            for status, response in operation["responses"].items():
                (media, content), = response["content"].items()
                if status.startswith("2") and media == "application/json":
                    for variant in content["schema"].get("anyOf", [content["schema"]]):
                        answer = _resolve(document, variant)
                        assert answer["type"] == "object" and answer["required"] and answer["properties"], where
                        assert set(answer["required"]) <= set(answer["properties"]), where
                elif status.startswith("2"):
                    assert (where, media) == ("GET /api/v1/models/{id}/preview", "image/jpeg")
                else:
                    assert content["schema"] == {"$ref": "#/components/schemas/Error"}, (where, status)
            if method in ("post", "put", "patch") and "requestBody" in operation:
                assert {"400", "413", "415"} <= set(operation["responses"]), where
    bodies = {(method, path): op["requestBody"] for path, ops in document["paths"].items() for method, op in ops.items()
              if "requestBody" in op}
    inventory = _resolve(document, bodies["post", "/api/v1/servers/{server_id}/models/sync"]["content"]["application/json"]["schema"])
    assert inventory["required"] == ["format", "server_id", "files"]
    assert inventory["properties"]["files"]["items"]["required"] == ["path", "size"]
    job = _resolve(document, bodies["post", "/api/v1/jobs/availability"]["content"]["application/json"]["schema"])
    assert job["required"] == ["job"]
    assert set(bodies["put", "/api/v1/servers/{server_id}/previews/{sha256}"]["content"]) == {"application/octet-stream"}


def test_the_validator_refuses_a_broken_document(central_server):
    document = central_server.get("/api/v1/openapi.json").json()
    del document["paths"]["/api/v1/models/{id}/info"]["get"]["parameters"]  # {id} no longer declared
    with pytest.raises(OpenAPIValidationError):
        validate(document)


def test_a_route_without_schemas_stops_the_build():
    def undescribed(request):
        """Something new.
        ---
        responses:
          200: {description: it}
        """

    with pytest.raises(LookupError, match="GET /api/v1/new has no entry"):
        build_document([*api_routes(), Route("/api/v1/new", undescribed, methods=["GET"])])


def test_the_answer_check_passes_the_server_and_fails_wrong_answers(central_server):
    wrong = {
        ("GET", "/api/v1/health"): (200, {"status": "ok"}),  # required fields missing
        ("GET", "/api/v1/servers"): (200, {"servers": [], "offline_after_seconds": 300, "extra": 1}),  # undescribed field
        ("GET", "/api/v1/models"): (418, {"error": "teapot", "field": None}),  # undocumented status
        ("GET", "/api/v1/admin/check"): (200, {"admin": "yes"}),  # not the constant true
        ("GET", "/api/v1/models/7/info"): (404, {"error": "no model", "field": None, "hint": "x"}),  # Error is closed
        ("GET", "/api/v1/models/wanted"): (200, [1, 2]),  # not an object
    }
    log = AnswerLog()
    with json_stub(wrong) as stub, log.watching(stub), log.watching(central_server.base_url), recording_answers(log):
        for method, path in wrong:
            requests.request(method, stub + path, timeout=10)
        assert central_server.get("/api/v1/health").status_code == 200
        assert central_server.get("/api/v1/models/7/info").status_code == 404
    answers = log.take()
    assert len(answers) == len(wrong) + 2
    problems = check_answers(answers, log)
    assert len(problems) == len(wrong), problems
    assert log.validated == 2 and log.seen == {"get /api/v1/health 200", "get /api/v1/models/{id}/info 404"}
    text = "\n".join(problems)
    for expected in ("'schema_version' is a required property", "'extra' was unexpected",
                     "status 418 is not documented for GET /api/v1/models", "$.admin: True was expected",
                     "'hint' was unexpected", "[1, 2] is not of type 'object'"):
        assert expected in text, text


INNER_TEST = '''
import pytest
import requests
from support_server import ANSWERS, json_stub

WRONG = {("GET", "/api/v1/health"): (200, {"status": "ok"})}


@pytest.fixture(scope="module")
def late_stub():
    with json_stub(WRONG) as stub, ANSWERS.watching(stub):
        yield stub
        requests.get(stub + "/api/v1/health", timeout=10)  # after the last test: left for the end of the run


def test_receives_a_wrong_answer(late_stub):
    assert requests.get(late_stub + "/api/v1/health", timeout=10).status_code == 200
'''


def test_a_wrong_answer_fails_the_test_run(tmp_path):
    """The suite's own wiring (conftest.py): a test that receives a wrong answer errors at teardown, and an answer
    received after the last test fails the run at its end."""
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env.pop("PYTEST_CURRENT_TEST", None)
    # -rN: no short summary, whose lines pytest cuts to the terminal's width except under CI
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rN", "-p", "no:cacheprovider", str(tmp_path)],
                         check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 passed, 1 error" in run.stdout, run.stdout
    assert "ERROR at teardown of test_receives_a_wrong_answer" in run.stdout
    assert run.stdout.count("'schema_version' is a required property") == 2, run.stdout
    assert "GET /api/v1/health -> 200 (in test_inner.py::test_receives_a_wrong_answer (call))" in run.stdout
    late = run.stdout.split("OpenAPI: 0 JSON answers from the server matched the document")[1]
    assert "GET /api/v1/health -> 200 (in test_inner.py::test_receives_a_wrong_answer (teardown))" in late, run.stdout
