"""The central server's configuration, read from the environment once at start-up."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

DEFAULT_CIVITAI_IMAGE_HOSTS = ("image.civitai.com", "imagecache.civitai.com")
REGISTRATION_MODES = ("loopback", "open", "closed")
NAME_CONFLICT_MODES = ("per-node", "strict")
FULFIL_MODES = ("off", "peer")


class ConfigError(ValueError):
    pass


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {text!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {text!r}")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    text = (env.get(name) or "").strip().lower()
    if not text:
        return default
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {text!r}")


def _words(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = (env.get(name) or default).strip().lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _model_roots(text: str | None) -> list[Path]:
    return [Path(part) for part in (text or "").split(os.pathsep) if part.strip()]


@dataclass
class ServerConfig:
    data_path: Path = Path("./data")
    # folders the server scans as a node of its own (MODEL_PATH, os.pathsep-separated)
    model_paths: list[Path] = field(default_factory=list)
    own_server_id: str = "central"
    admin_token: str | None = None  # None: read or generate CONFIG_DATA_PATH/admin_token
    # who may register a new node on first contact: loopback clients only, anyone, or nobody (admin issues tokens)
    registration: str = "loopback"
    # addresses (or CIDR networks) whose X-Forwarded-For / X-Forwarded-Proto are believed; none by default
    trusted_proxies: tuple[str, ...] = ()
    # when set, the job checks need it (or the admin token): strangers cannot inflate the most-wanted list
    queue_token: str | None = None
    # a name that means different content on different nodes: resolved per node (default) or ambiguous everywhere
    name_conflicts: str = "per-node"
    # a dispatch-check without "fulfil" in its body: order no copies (off) or copy missing models from peers (peer)
    fulfil: str = "off"
    offline_after_seconds: float = 300.0
    max_request_bytes: int = 64 * 1024 * 1024
    max_decompressed_bytes: int = 512 * 1024 * 1024
    max_inventory_files: int = 200_000
    civitai_enabled: bool = True
    civitai_api_base: str = "https://civitai.com"
    civitai_api_key: str | None = None
    civitai_image_hosts: tuple[str, ...] = DEFAULT_CIVITAI_IMAGE_HOSTS
    civitai_requests_per_minute: float = 30.0
    civitai_timeout_seconds: float = 30.0
    civitai_recheck_days: float = 30.0
    civitai_max_backoff_seconds: float = 3600.0
    civitai_batch_size: int = 50
    preview_max_bytes: int = 20 * 1024 * 1024
    preview_max_side: int = 1024
    worker_idle_seconds: float = 30.0  # how long the Civitai worker sleeps when nothing is due

    @property
    def database_path(self) -> Path:
        return self.data_path / "registry.db"

    @property
    def backups_path(self) -> Path:
        return self.data_path / "backups"

    @property
    def previews_path(self) -> Path:
        return self.data_path / "previews"

    @property
    def admin_token_path(self) -> Path:
        return self.data_path / "admin_token"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ServerConfig":
        env = os.environ if env is None else env
        hosts = env.get("CIVITAI_IMAGE_HOSTS")
        image_hosts = tuple(h.strip().lower() for h in hosts.split(",") if h.strip()) if hosts else DEFAULT_CIVITAI_IMAGE_HOSTS
        defaults = cls()
        return cls(
            data_path=Path(env.get("CONFIG_DATA_PATH") or "./data"),
            model_paths=_model_roots(env.get("MODEL_PATH")),
            own_server_id=env.get("MODELSYNC_SERVER_ID") or defaults.own_server_id,
            admin_token=env.get("MODELSYNC_ADMIN_TOKEN") or None,
            registration=_choice(env, "MODELSYNC_REGISTRATION", REGISTRATION_MODES, defaults.registration),
            trusted_proxies=_words(env.get("MODELSYNC_TRUSTED_PROXIES")),
            queue_token=env.get("MODELSYNC_QUEUE_TOKEN") or None,
            name_conflicts=_choice(env, "MODELSYNC_NAME_CONFLICTS", NAME_CONFLICT_MODES, defaults.name_conflicts),
            fulfil=_choice(env, "MODELSYNC_FULFIL", FULFIL_MODES, defaults.fulfil),
            offline_after_seconds=_number(env, "MODELSYNC_OFFLINE_AFTER", defaults.offline_after_seconds),
            max_request_bytes=int(_number(env, "MODELSYNC_MAX_REQUEST_BYTES", defaults.max_request_bytes)),
            max_decompressed_bytes=int(_number(env, "MODELSYNC_MAX_DECOMPRESSED_BYTES", defaults.max_decompressed_bytes)),
            max_inventory_files=int(_number(env, "MODELSYNC_MAX_INVENTORY_FILES", defaults.max_inventory_files)),
            civitai_enabled=_flag(env, "CIVITAI_ENABLED", True),
            civitai_api_base=(env.get("CIVITAI_API_BASE") or defaults.civitai_api_base).rstrip("/"),
            civitai_api_key=env.get("CIVITAI_API_KEY") or None,
            civitai_image_hosts=image_hosts,
            civitai_requests_per_minute=_number(env, "CIVITAI_REQUESTS_PER_MINUTE", defaults.civitai_requests_per_minute),
            civitai_timeout_seconds=_number(env, "CIVITAI_TIMEOUT", defaults.civitai_timeout_seconds),
            civitai_recheck_days=_number(env, "CIVITAI_RECHECK_DAYS", defaults.civitai_recheck_days),
            civitai_max_backoff_seconds=_number(env, "CIVITAI_MAX_BACKOFF", defaults.civitai_max_backoff_seconds),
        )
