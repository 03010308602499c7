"""The central server's configuration, read from the environment once at start-up."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

DEFAULT_CIVITAI_IMAGE_HOSTS = ("image.civitai.com", "imagecache.civitai.com")
REGISTRATION_MODES = ("loopback", "open", "closed")
NAME_CONFLICT_MODES = ("per-node", "strict")
FULFIL_MODES = ("off", "peer", "peer,civitai")


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


def _delays(env: Mapping[str, str], name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    """Comma-separated seconds, e.g. "5,30,120"; empty: the default."""
    words = _words(env.get(name))
    if not words:
        return default
    return tuple(_number({name: word}, name, 0.0) for word in words)


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
    # a dispatch-check without "fulfil" in its body: order no copies (off), copy missing models from peers (peer), or
    # also download from Civitai what no node has (peer,civitai)
    fulfil: str = "off"
    # hand the server's CIVITAI_API_KEY to a node with its Civitai download orders (only the destination node sees it)
    share_civitai_key: bool = False
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
    # webhooks (docs/webhooks.md): the waits before each retry of a failed delivery (then it fails for good), a
    # try's timeout, the most undelivered events one endpoint keeps (the oldest dropped), how often the clock
    # judges nodes online/offline and disks low, how long finished deliveries stay in the log
    webhook_retry_delays: tuple[float, ...] = (5, 30, 120, 600, 1800, 3600, 10800, 21600, 43200)
    webhook_timeout_seconds: float = 10.0
    webhook_backlog_cap: int = 1000
    webhook_clock_seconds: float = 15.0
    webhook_log_days: float = 14.0
    # Civitai update checks (#12): on/off, and how often each Civitai model the fleet holds is asked about again
    update_checks: bool = True
    update_check_hours: float = 24.0
    # job demand counted in memory is written to the registry this often (a crash loses at most this much)
    demand_flush_seconds: float = 10.0

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
            fulfil=_choice({"MODELSYNC_FULFIL": (env.get("MODELSYNC_FULFIL") or "").replace(" ", "")}, "MODELSYNC_FULFIL",
                           FULFIL_MODES, defaults.fulfil),
            share_civitai_key=_flag(env, "MODELSYNC_SHARE_CIVITAI_KEY", defaults.share_civitai_key),
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
            webhook_retry_delays=_delays(env, "MODELSYNC_WEBHOOK_RETRY_DELAYS", defaults.webhook_retry_delays),
            webhook_timeout_seconds=_number(env, "MODELSYNC_WEBHOOK_TIMEOUT", defaults.webhook_timeout_seconds),
            webhook_backlog_cap=int(_number(env, "MODELSYNC_WEBHOOK_BACKLOG", defaults.webhook_backlog_cap)),
            webhook_clock_seconds=_number(env, "MODELSYNC_WEBHOOK_CLOCK", defaults.webhook_clock_seconds),
            webhook_log_days=_number(env, "MODELSYNC_WEBHOOK_LOG_DAYS", defaults.webhook_log_days),
            update_checks=_flag(env, "MODELSYNC_UPDATE_CHECKS", defaults.update_checks),
            update_check_hours=_number(env, "MODELSYNC_UPDATE_CHECK_HOURS", defaults.update_check_hours),
            demand_flush_seconds=_number(env, "MODELSYNC_DEMAND_FLUSH_SECONDS", defaults.demand_flush_seconds),
        )
