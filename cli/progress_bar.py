"""A terminal progress bar for scans: bytes with ETA while hashing, files otherwise (tqdm)."""
from __future__ import annotations

from tqdm import tqdm

from modelsync.shared.scan.scanner import ScanProgress


class ScanProgressBar:
    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.phase: str | None = None

    def update(self, p: ScanProgress) -> None:
        if p.phase != self.phase:
            self.close()
            self.phase = p.phase
            if p.phase == "hashing":
                self.bar = tqdm(total=p.bytes_total, unit="B", unit_scale=True, unit_divisor=1024, desc="hashing", dynamic_ncols=True)
            elif p.phase == "reading":
                self.bar = tqdm(total=p.files_total, unit="file", desc="reading headers", dynamic_ncols=True)
            else:
                return
        if self.bar is None:
            return
        self.bar.n = p.bytes_done if p.phase == "hashing" else p.files_done
        if p.phase == "hashing":
            self.bar.set_postfix_str(f"{p.files_done}/{p.files_total} files", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
