"""The dashboard's server-rendered pages read with plain HTTP against the real server and a fleet of real nodes: what
each page says is what the JSON API says (problems, unavailable folders, files not hashed yet, node counts), times
are <time> tags in UTC, every page names its favicon, and the Metadata column's words all have a legend. The same
pages in a real browser: tests/test_dashboard_browser.py."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest
from support_browser import build_fleet
from support_server import make_server, wait_for  # noqa: F401  (fixture)

from modelsync.server.dashboard import METADATA_SOURCES
from modelsync.shared.records import MANUAL_SOURCE, SOURCE_PRIORITY, UNKNOWN_MARK

PAGES = ("/dashboard/models", "/dashboard/nodes", "/dashboard/problems", "/dashboard/unhashed", "/dashboard/wanted",
         "/dashboard/jobs", "/dashboard/overrides", "/dashboard/transfers")


@dataclass
class Row:
    attrs: dict[str, str]
    cells: list[str] = field(default_factory=list)
    times: list[dict[str, str]] = field(default_factory=list)  # the attributes of each <time> in the row


class TableReader(HTMLParser):
    """The body rows of the table with a given id: each row's attributes, its cells' text, its <time> tags."""

    def __init__(self, table_id: str):
        super().__init__()
        self.table_id, self.inside, self.rows = table_id, False, []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "table":
            self.inside = values.get("id") == self.table_id
        elif self.inside and tag == "tr" and self.rows is not None:
            self.rows.append(Row(values))
        elif self.inside and tag == "td" and self.rows:
            self.cell = []
        elif self.inside and tag == "time" and self.rows:
            self.rows[-1].times.append(values)

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.inside = False
        elif tag == "td" and self.cell is not None:
            self.rows[-1].cells.append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def table(html: str, table_id: str) -> list[Row]:
    reader = TableReader(table_id)
    reader.feed(html)
    return [row for row in reader.rows if row.cells]  # the header row has <th> only


@pytest.fixture
def fleet(make_server, tmp_path):  # noqa: F811
    server = make_server(model_paths=[tmp_path / "central-models"])
    return build_fleet(server, tmp_path / "central-models", tmp_path / "nodes")


def page(fleet, path: str, status: int = 200) -> str:
    response = fleet.server.get(path)
    assert response.status_code == status, (path, response.status_code)
    assert response.headers["content-type"].startswith("text/html")
    return response.text


def servers(fleet) -> dict[str, dict]:
    return {n["id"]: n for n in fleet.server.get("/api/v1/servers").json()["servers"]}


def test_the_problems_page_lists_what_the_api_lists(fleet):
    html = page(fleet, "/dashboard/problems")
    expected = [f for node in sorted(servers(fleet)) for state in ("broken", "unreachable")
                for f in fleet.server.get(f"/api/v1/servers/{node}/files", params={"state": state}).json()["files"]]
    assert [f["state"] for f in expected] == ["broken", "unreachable"]  # gpu-01's, from the fleet
    rows = table(html, "problem-files")
    assert [(r.attrs["data-server-id"], r.attrs["data-state"]) for r in rows] == [("gpu-01", f["state"]) for f in expected]
    for row, f in zip(rows, expected):
        assert row.cells[1] == f["rel_name"] + f["path"]
        assert row.cells[3] == f["reason"]
        assert row.times[0] == {"datetime": f["since"], "title": f["since"] + " UTC"}  # since, in UTC until the browser
    assert expected[1]["hash_autov2"] in rows[1].cells[7]
    assert '<a href="/dashboard/problems" class="current">Problems</a>' in html  # reachable from the navigation

    folders = servers(fleet)["gpu-01"]["unavailable"]
    assert [r.cells for r in table(html, "unavailable-folders")] == [["gpu-01", f["path"], f["reason"]] for f in folders]

    only_broken = table(page(fleet, "/dashboard/problems?state=broken&server=gpu-01"), "problem-files")
    assert [r.attrs["data-state"] for r in only_broken] == ["broken"]
    assert table(page(fleet, "/dashboard/problems?server=gpu-02"), "problem-files")[0].cells == ["No broken or unreachable file on gpu-02."]
    refused = page(fleet, "/dashboard/problems?state=ok", 400)
    assert "400: state must be one of broken, unreachable" in refused


def test_the_nodes_page_counts_problems_as_the_api_does(fleet):
    rows = {r.attrs["data-server-id"]: r for r in table(page(fleet, "/dashboard/nodes"), "nodes")}
    for node_id, node in servers(fleet).items():
        cells = rows[node_id].cells
        assert (cells[6], cells[7], cells[8]) == (str(node["unhashed_count"]), str(node["broken_count"]), str(node["unreachable_count"]))
        assert cells[9] == " ".join(f"{f['path']} {f['reason']}" for f in node["unavailable"])
        assert rows[node_id].times[0] == {"datetime": node["last_sync"], "title": node["last_sync"] + " UTC"}
    assert rows["gpu-01"].cells[7:9] == ["1", "1"]


def test_files_not_hashed_yet_are_on_their_page_and_the_models_page_says_so(fleet):
    assert 'id="unhashed-notice"' not in page(fleet, "/dashboard/models")
    scan = fleet.server.post("/api/v1/models/scan", json={"calculate_hashes": False}).json()
    assert scan["hashesSkipped"] == 3
    expected = fleet.server.get("/api/v1/servers/central/files", params={"unhashed": "true"}).json()
    rows = table(page(fleet, "/dashboard/unhashed?server=central"), "unhashed-files")
    assert [r.cells[1] for r in rows] == [f["rel_name"] + f["path"] for f in expected["files"]]
    assert {r.cells[2] for r in rows} == {"not hashed"}
    assert len(table(page(fleet, "/dashboard/unhashed"), "unhashed-files")) == sum(n["unhashed_count"] for n in servers(fleet).values())

    models = page(fleet, "/dashboard/models")
    assert re.search(r"3 files are not hashed yet:\s+not models until hashed", models)
    assert 'href="/dashboard/unhashed?server=central"' in page(fleet, "/dashboard/models?server=central")
    assert 'id="unhashed-notice"' not in page(fleet, "/dashboard/models?server=gpu-02")

    fleet.server.post("/api/v1/models/scan", json={"calculate_hashes": True})  # hashed: models now, the notice gone
    assert 'id="unhashed-notice"' not in page(fleet, "/dashboard/models")
    assert table(page(fleet, "/dashboard/unhashed"), "unhashed-files")[0].cells == ["Every file is hashed."]


def test_every_metadata_word_has_its_legend(fleet):
    assert set(METADATA_SOURCES) == {*SOURCE_PRIORITY, MANUAL_SOURCE, UNKNOWN_MARK}
    html = page(fleet, "/dashboard/models?limit=500")
    for word in METADATA_SOURCES:
        assert f"<dt>{word}</dt>" in html
    for row in table(html, "models-table"):
        assert row.cells[6] in METADATA_SOURCES


def test_every_page_names_its_favicon_and_no_data_image(fleet):
    for path in PAGES:
        html = page(fleet, path)
        assert '<link rel="icon" href="/dashboard/static/favicon.svg" type="image/svg+xml">' in html
        assert not re.search(r"""(src=["']?|url\(\s*["']?|srcset=["']?)data:""", html)
    icon = fleet.server.get("/dashboard/static/favicon.svg")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert icon.text.startswith("<svg") and "data:" not in icon.text and "<script" not in icon.text
    guess = fleet.server.get("/favicon.ico", allow_redirects=False)
    assert (guess.status_code, guess.headers["location"]) == (301, "/dashboard/static/favicon.svg")


def test_the_wanted_page_holds_no_wanted_list_itself(make_server):  # noqa: F811
    # the list is read by the browser from the API, which needs the queue token when one is set: the page leaks none
    server = make_server(queue_token="queue-token-for-the-pages-test")
    server.post("/api/v1/jobs/availability", json={"job": {"prompt": "<lora:secret_wanted_lora:1>"}},
                headers={"Authorization": "Bearer queue-token-for-the-pages-test"})
    wanted = wait_for(lambda: server.get("/api/v1/models/wanted", headers=server.admin_headers).json()["wanted"])
    assert wanted[0]["reference"] == "<lora:secret_wanted_lora:1>"
    html = server.get("/dashboard/wanted").text
    assert "secret_wanted_lora" not in html and '<script src="/dashboard/static/wanted.js" defer>' in html
