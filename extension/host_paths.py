"""The node's model roots, read from the running host (Forge / A1111) at run time."""
from __future__ import annotations

import importlib
import os
from typing import Any

from ..shared.scan.model_folders import roots_for
from ..shared.records import Root

# (module, attribute, role): folders the host loads models from; missing modules/attributes are skipped
# (lora_dir exists only when the built-in LoRA extension loaded, controlnet_dir only in Forge).
HOST_FOLDERS: list[tuple[str, str, str | None]] = [
    ("modules.paths", "models_path", None),
    ("modules.sd_models", "model_path", "checkpoint"),
    ("modules.shared", "cmd_opts.ckpt_dir", "checkpoint"),
    ("modules.shared", "cmd_opts.lora_dir", "lora"),
    ("modules.shared", "cmd_opts.lyco_dir_backcompat", "lora"),
    ("modules.shared", "cmd_opts.vae_dir", "vae"),
    ("modules.shared", "cmd_opts.embeddings_dir", "embedding"),
    ("modules.shared", "cmd_opts.hypernetwork_dir", "hypernetwork"),
    ("modules.shared", "cmd_opts.text_encoder_dir", "text_encoder"),
    ("modules_forge.shared", "controlnet_dir", "controlnet"),
    ("modules.shared", "cmd_opts.esrgan_models_path", "upscaler"),
    ("modules.shared", "cmd_opts.realesrgan_models_path", "upscaler"),
    ("modules.shared", "cmd_opts.dat_models_path", "upscaler"),
]


def _lookup(module_name: str, dotted: str) -> Any:
    try:
        value: Any = importlib.import_module(module_name)
    except ImportError:
        return None
    for part in dotted.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


def host_roots(extra_paths: list[str] | None = None) -> list[Root]:
    """Union of the host's folders and `extra_paths`, symlinks resolved, one Root per folder; a folder
    with a specific role wins over the same folder found role-less."""
    by_path: dict[str, Root] = {}

    def add(root: Root) -> None:
        real = os.path.realpath(root.path)
        if not os.path.isdir(real):
            return
        known = by_path.get(real)
        if known is None or (known.role is None and root.role is not None):
            by_path[real] = Root(real, root.role)

    for module_name, attribute, role in HOST_FOLDERS:
        value = _lookup(module_name, attribute)
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            continue
        if role is None:
            for root in roots_for(str(value)):
                add(root)
        else:
            add(Root(str(value), role))
    for path in extra_paths or []:
        for root in roots_for(path):
            add(root)
    return sorted(by_path.values(), key=lambda r: r.path)
