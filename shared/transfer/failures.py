"""Why a transfer stopped: one exception carrying a stable reason word (a transfer's `reason`) and a sentence."""
from __future__ import annotations

# reason -> what it means; the words are stable (stored in transfer orders, shown to operators)
REASONS = {
    "hash_mismatch": "the bytes received do not have the expected SHA256; the temp file was removed",
    "disk_full": "not enough free space for the file plus the free-disk floor; nothing was written",
    "source_gone": "the source could not be reached, dropped the stream too often, or no longer holds the file",
    "not_allowed": "the source refused the request (no grant, an invalid or expired one)",
    "cancelled": "cancelled; the temp file is kept for a resume",
    "changed": "the source's file no longer matches its catalog or the order (it re-scans)",
    "too_long": "the source sent more bytes than the expected size; the temp file was removed",
    "root_unavailable": "the destination root is missing or not a folder (an unmounted share?)",
    "bad_name": "the relative name is empty once made safe",
    "auth_required": "Civitai wants an API key for this download (401 or its login page): set CIVITAI_API_KEY",
    "early_access": "the version is in Civitai's early access: downloadable once it ends (the date when Civitai gave it)",
    "not_found": "the download source answered 404: the file or version does not exist (any more)",
    "no_hash": "Civitai lists no SHA256 for the file: nothing could verify it, so it is not downloaded",
    "rate_limited": "Civitai or the URL's host kept answering 429/5xx through the back-off; the transfer can be retried later",
    "url_refused": "not an http(s) URL, or a redirect to another scheme",
}

# never retried, by the node or the server: the same request gets the same answer until an operator acts
TERMINAL_DOWNLOAD_REASONS = frozenset({"auth_required", "early_access", "not_found", "no_hash", "url_refused"})


class TransferFailed(Exception):
    """`retryable`: the same source may succeed later (a dropped connection, a 5xx); the receiver resumes on it."""

    def __init__(self, reason: str, message: str, *, retryable: bool = False):
        if reason not in REASONS:
            raise ValueError(f"unknown transfer failure reason {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable
