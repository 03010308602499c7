"""A peer node as a source: `GET {base}/modelsync/v1/files/{sha256}` with the grant, resumed with Range + If-Range."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import requests

from .failures import TransferFailed
from .protocol import GRANT_HEADER, NODE_HEADER, etag, file_url
from .ranges import content_range
from .source import Opened, response_chunks

CHUNK_SIZE = 256 * 1024  # a cancel is seen between chunks
REFUSAL_BODY_LIMIT = 4096


@dataclass
class PeerSource:
    base_url: str  # the URL the source node reports for peers
    sha256: str
    size: int
    node_id: str  # this (the destination) node, as the grant names it
    grant: str = field(repr=False)
    session: requests.Session = field(default_factory=requests.Session, repr=False)
    timeout: tuple[float, float] = (10.0, 60.0)  # connect, read (a stalled stream counts as dropped)

    def open(self, offset: int) -> Opened:
        response = self._get(offset)
        if offset and response.status_code in (206, 416) and not self._continues(response, offset):
            response.close()  # not the range asked for: restart from the beginning
            response, offset = self._get(0), 0
        if response.status_code == 206 and offset:
            return Opened(offset, response_chunks(response, CHUNK_SIZE), response.close)
        if response.status_code != 200:
            self._refuse(response)
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) != self.size:
            response.close()
            raise TransferFailed("changed", f"the source offers {declared} bytes, the order expects {self.size}")
        return Opened(0, response_chunks(response, CHUNK_SIZE), response.close)

    def _continues(self, response: requests.Response, offset: int) -> bool:
        said = content_range(response.headers.get("Content-Range"))
        return response.status_code == 206 and said is not None and said.start == offset and said.total == self.size

    def _get(self, offset: int) -> requests.Response:
        headers = {GRANT_HEADER: self.grant, NODE_HEADER: self.node_id, "Accept-Encoding": "identity"}
        if offset:
            headers.update({"Range": f"bytes={offset}-", "If-Range": etag(self.sha256)})
        try:
            return self.session.get(file_url(self.base_url, self.sha256), headers=headers, stream=True,
                                    timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise TransferFailed("source_gone", f"the source node cannot be reached: {type(exc).__name__}",
                                 retryable=True) from None

    def _refuse(self, response: requests.Response) -> None:
        status = response.status_code
        try:
            said = response.raw.read(REFUSAL_BODY_LIMIT, decode_content=True)
            word = json.loads(said).get("reason")
        except (ValueError, AttributeError, requests.RequestException, OSError):
            word = None
        finally:
            response.close()
        detail = f"HTTP {status}" + (f" {word}" if isinstance(word, str) and word.isidentifier() else "")
        if status in (401, 403):
            raise TransferFailed("not_allowed", f"the source node refused the grant ({detail})")
        if status == 409:
            raise TransferFailed("changed", f"the source node's file changed since its last scan ({detail})")
        raise TransferFailed("source_gone", f"the source node cannot serve the file ({detail})",
                             retryable=status >= 500)
