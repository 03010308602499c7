"""The dashboard's Content-Security-Policy: what the server sends is what docs/api.md and docs/security.md say,
and it allows no `data:` images because no page uses one (pages, their CSS and JavaScript as served)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from support_server import run_server

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with run_server(tmp_path_factory.mktemp("headers")) as running:
        yield running


def documented_policies() -> dict[str, str]:
    found = {}
    for name in ("api.md", "security.md"):
        text = " ".join((DOCS / name).read_text().split())  # a policy may be wrapped over lines
        match = re.search(r"Content-Security-Policy: `?(default-src [^`]*?frame-ancestors 'none')", text)
        assert match, f"docs/{name} states no Content-Security-Policy"
        found[name] = match.group(1)
    return found


def test_the_documented_policy_is_the_one_sent(server):
    sent = server.get("/dashboard/models").headers["content-security-policy"]
    assert server.get("/api/v1/health").headers["content-security-policy"] == sent
    assert documented_policies() == {"api.md": sent, "security.md": sent}
    assert "img-src 'self';" in sent and "data:" not in sent


def test_no_page_needs_a_data_image(server):
    pages = ["/dashboard/models", "/dashboard/nodes", "/dashboard/jobs", "/dashboard/overrides", "/dashboard/problems", "/dashboard/transfers",
             "/dashboard/unhashed", "/dashboard/wanted"]
    texts = [server.get(page).text for page in pages]
    assets = {m for text in texts for m in re.findall(r'(?:href|src)="(/dashboard/static/[^"]+)"', text)}
    assert any(a.endswith(".css") for a in assets) and any(a.endswith(".js") for a in assets)
    for asset in sorted(assets):
        response = server.get(asset)
        assert response.status_code == 200, asset
        texts.append(response.text)
    for text in texts:
        assert "data:image" not in text and not re.search(r"""(src=["']?|url\(\s*["']?|srcset=["']?)data:""", text)
