"""Fleet nodes for the job-check tests: real model files in a Forge `models/` tree, scanned and hashed by the real
scanner into the node's own catalog, then applied to a registry (`apply_to`) or pushed to the real server over HTTP
(`push`). A Windows node reports its files the way a node on Windows does: `C:\\sd\\models\\Lora\\sub\\x.safetensors`
with rel_name `sub\\x.safetensors`.

Expected hashes are computed here with hashlib, independently of modelsync's hashing.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import model_factory

from modelsync.shared.catalog import migrate, open_catalog
from modelsync.shared.inventory import Inventory
from modelsync.shared.inventory_apply import apply_inventory
from modelsync.shared.scan.model_folders import roots_for
from modelsync.shared.push_client import NodeCredentials, ServerClient
from modelsync.shared.records import Root
from modelsync.shared.scan.scanner import scan

FOLDERS = ("Stable-diffusion", "Lora", "VAE", "embeddings", "ControlNet")
CIVITAI_FIXTURES = Path(__file__).parent / "fixtures" / "civitai"
WINDOWS_MODELS = "C:\\sd\\models"
# a real infotext of an image made by A1111 1.9.4, as published with it
INFOTEXT_1_9_4 = (
    "1girl,A superstar on stage.,, <lora:LCM_15:1>, <lora:ip-adapter-faceid-plusv2_sd15_lora:1>\n"
    "Negative prompt: MajicNegative_V2,badhandv4,\n"
    "Steps: 6, Sampler: LCM, Schedule type: Automatic, CFG scale: 1.5, Seed: 3748719078, Size: 768x1024, "
    "Model hash: 19bbe9faa4, Model: fantasticmix_k2, VAE hash: 07af11b95c, VAE: vae-ft-mse-840000-ema-pruned.safetensors, "
    'Clip skip: 2, Lora hashes: "LCM_15: aaebf6360f7d, ip-adapter-faceid-plusv2_sd15_lora: a95a0f4bdcb9", '
    'TI hashes: "MajicNegative_V2: a53884ef726b, badhandv4: 5e40d722fc3d", Downcast alphas_cumprod: True, Version: v1.9.4'
)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def addnet_of(path: Path) -> str:
    """AutoV3: SHA256 of a safetensors file after its 8-byte header length and JSON header."""
    data = Path(path).read_bytes()
    (header_length,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + header_length :]).hexdigest()


def autov1_of(path: Path) -> str:
    data = Path(path).read_bytes()
    return hashlib.sha256(data[0x100000 : 0x110000]).hexdigest()[:8]


class JobNode:
    """One Forge node: its models/ folder, its catalog, its client to the central server."""

    def __init__(self, base: Path, server_id: str, windows: bool = False, base_url: str | None = None):
        self.server_id = server_id
        self.windows = windows
        self.models = base / server_id / "models"
        for folder in FOLDERS:
            (self.models / folder).mkdir(parents=True, exist_ok=True)
        self.catalog = open_catalog(base / server_id / "catalog.db")
        migrate(self.catalog)
        self.client = ServerClient(base_url, NodeCredentials.load(base / server_id, server_id), retries=0) if base_url else None

    def add(self, folder: str, rel_name: str, write: Callable[..., Path] = model_factory.write_lora, **kwargs: Any) -> Path:
        """Write a real model file at models/<folder>/<rel_name> (rel_name '/'-separated)."""
        return write(self.models / folder / rel_name, **kwargs)

    def copy(self, source: Path, folder: str, rel_name: str) -> Path:
        target = self.models / folder / rel_name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        return target

    def civitai_sidecar(self, model: Path, fixture: str = "civitai_model_version_1387174_lora_flux_lora-manager.json") -> dict:
        """A real Civitai version object beside the model, re-keyed to the model's own SHA256."""
        version = json.loads((CIVITAI_FIXTURES / fixture).read_text())
        version["files"][0]["hashes"] = {"SHA256": sha256_of(model).upper()}
        model.with_name(model.name.rsplit(".", 1)[0] + ".civitai.info").write_text(json.dumps(version))
        return version

    def scan(self, calculate_hashes: bool = True) -> Inventory:
        report = scan(roots_for(str(self.models)), self.catalog, self.server_id, calculate_hashes=calculate_hashes,
                      workers=1, display_name=f"Node {self.server_id}", api_url=f"http://{self.server_id}:7860")
        inventory = report.inventory
        return windows_inventory(inventory, self.models) if self.windows else inventory

    def apply_to(self, registry, calculate_hashes: bool = True) -> Inventory:
        """Scan and apply the inventory to a registry database directly, as the server's sync does."""
        inventory = self.scan(calculate_hashes)
        apply_inventory(registry, inventory)
        return inventory

    def push(self, calculate_hashes: bool = True) -> dict:
        assert self.client is not None
        return self.client.push_inventory(self.scan(calculate_hashes))


def windows_inventory(inventory: Inventory, models: Path) -> Inventory:
    """The inventory as a Windows node reports it: drive-letter paths and backslash relative names."""

    def windows(path: str) -> str:
        return WINDOWS_MODELS + "\\" + str(Path(path).relative_to(models)).replace("/", "\\")

    files = [replace(f, path=windows(f.path), rel_name=f.rel_name.replace("/", "\\")) for f in inventory.files]
    roots = [Root(windows(r.path), r.role) for r in inventory.roots]
    return replace(inventory, files=files, roots=roots)


def registry(path: Path):
    db = open_catalog(path)
    migrate(db)
    return db


def register_node(db, server_id: str, last_contact: str, api_url: str | None = None) -> None:
    """The servers row a node's sync or heartbeat leaves (for registries filled with apply_inventory)."""
    db.execute(
        """INSERT INTO servers (id, display_name, api_url, last_sync, last_heartbeat) VALUES (?, ?, ?, ?, ?)
           ON CONFLICT (id) DO UPDATE SET last_sync = excluded.last_sync, last_heartbeat = excluded.last_heartbeat""",
        [server_id, f"Node {server_id}", api_url or f"http://{server_id}:7860", last_contact, last_contact],
    )


def set_last_contact(db_path: Path, server_id: str, when: str) -> None:
    """Make a node look silent since `when` (what a node that stopped syncing and heartbeating leaves)."""
    with sqlite3.connect(db_path, timeout=30) as conn:
        conn.execute("UPDATE servers SET last_sync = ?, last_heartbeat = ? WHERE id = ?", [when, when, server_id])
