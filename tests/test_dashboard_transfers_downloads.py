"""The dashboard's Transfers page shows where each transfer comes from: the peer node, Civitai's model and version
names linked to the Civitai page, or a URL's host and path (never its query, which may hold a token)."""
from __future__ import annotations

import hashlib
import html

from support_civitai import civitai_stub  # noqa: F401  (fixture)
from support_server import make_server  # noqa: F401  (fixture)
from test_transfer_api_downloads import KEY, DownloadFleet, civitai_server, lora_bytes


def test_the_source_column_names_the_peer_the_civitai_version_or_the_urls_host_and_path(make_server, civitai_stub,  # noqa: F811
                                                                                         tmp_path):
    fleet = DownloadFleet(civitai_server(make_server, civitai_stub, civitai_api_key=KEY, share_civitai_key=True),
                          tmp_path, civitai_stub)
    data, _ = lora_bytes(tmp_path, "page.safetensors")
    version = fleet.version(data, name="v2.5 <beta>")
    fleet.created({"server_id": "node-b", "civitai_version_id": version["id"]})
    fleet.order_lora()
    fleet.created({"server_id": "node-a", "url": "https://cdn.example.net/m/ink.safetensors?sig=t0ken-abc",
                   "sha256": hashlib.sha256(b"ink").hexdigest(), "role": "lora"})
    page = fleet.server.get("/dashboard/transfers")
    assert page.status_code == 200
    text = html.unescape(page.text)
    assert (f'href="https://civitai.com/models/{version["modelId"]}?modelVersionId={version["id"]}"' in text
            and "Vivid Impressions Storybook Style · v2.5 <beta>" in text)
    assert "<beta>" not in page.text  # escaped
    assert "https://cdn.example.net/m/ink.safetensors" in text and "t0ken-abc" not in text
    assert '<span class="source-kind">peer</span>' in page.text
    assert KEY not in text
