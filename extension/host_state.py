"""What the host (Forge / A1111) is doing, for the node's state: the checkpoint resident in memory and the one
selected, Forge's additional modules, busy or idle. Read from the background thread with plain attribute reads, never
through `shared.sd_model` (in A1111 that property loads a model when none is loaded); `on_model_loaded` only records
the event and wakes the state thread, so a model load is never slowed.

Forge loads lazily: `opts.sd_model_checkpoint` is only the selection; the weights load at the next generation
(`forge_model_reload`), which sets `model_data.sd_model.sd_checkpoint_info`, `opts.sd_checkpoint_hash` and fires
`on_model_loaded` (../shared/notes/civitai-downloads.md, "Loaded model")."""
from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable
from typing import Any

from ..shared.node.state import Checkpoint, HostActivity, sha256_or_none


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _checkpoint(info: Any, sha256: Any = None) -> Checkpoint | None:
    """A host CheckpointInfo (title, sha256 once the host hashed the file) as the report names it."""
    title = getattr(info, "title", None)
    if not isinstance(title, str) or not title:
        return None
    return Checkpoint(title, sha256_or_none(getattr(info, "sha256", None)) or sha256_or_none(sha256))


class HostState:
    """`activity()` for the node service; `model_loaded` is the host's on_model_loaded callback."""

    def __init__(self, changed: Callable[[], None] = lambda: None):
        self._changed = changed
        self._lock = threading.Lock()
        self._loaded_event: Checkpoint | None = None  # the last on_model_loaded's checkpoint

    def model_loaded(self, sd_model: Any) -> None:
        opts = getattr(_module("modules.shared"), "opts", None)
        loaded = _checkpoint(getattr(sd_model, "sd_checkpoint_info", None), getattr(opts, "sd_checkpoint_hash", None))
        with self._lock:
            self._loaded_event = loaded
        self._changed()

    def loaded(self) -> Checkpoint | None:
        """Resident: the model the host holds now (`model_data.sd_model`), else the last loaded event's."""
        sd_models = _module("modules.sd_models")
        model = getattr(getattr(sd_models, "model_data", None), "sd_model", None)
        if model is not None:
            opts = getattr(_module("modules.shared"), "opts", None)
            found = _checkpoint(getattr(model, "sd_checkpoint_info", None), getattr(opts, "sd_checkpoint_hash", None))
            if found is not None:
                return found
        with self._lock:
            return self._loaded_event

    @staticmethod
    def selected() -> Checkpoint | None:
        opts = getattr(_module("modules.shared"), "opts", None)
        title = getattr(opts, "sd_model_checkpoint", None)
        if not isinstance(title, str) or not title:
            return None
        sd_models = _module("modules.sd_models")
        info = (getattr(sd_models, "checkpoints_list", None) or {}).get(title) or \
            (getattr(sd_models, "checkpoint_aliases", None) or {}).get(title)
        return Checkpoint(title, sha256_or_none(getattr(info, "sha256", None)))

    @staticmethod
    def modules() -> tuple[str, ...]:
        """Forge's additional modules (VAE / text encoders): their file names."""
        opts = getattr(_module("modules.shared"), "opts", None)
        found = getattr(opts, "forge_additional_modules", None)
        if not isinstance(found, (list, tuple)):
            return ()
        return tuple(os.path.basename(str(m)) for m in found if m)

    @staticmethod
    def busy() -> bool | None:
        """Whether the host is generating: `state.job` names a job or `job_count` is not 0; None without a state."""
        state = getattr(_module("modules.shared"), "state", None)
        if state is None:
            return None
        return bool(getattr(state, "job", "")) or bool(getattr(state, "job_count", 0))

    def activity(self) -> HostActivity:
        return HostActivity(self.loaded(), self.selected(), self.modules(), self.busy())
