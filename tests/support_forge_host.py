"""A small stand-in for the parts of Forge/A1111 the extension touches, with the real signatures:
modules.script_callbacks (on_ui_tabs -> [(blocks, title, elem_id)], on_ui_settings(), on_app_started(demo, app),
on_model_loaded(sd_model)), modules.shared (opts.add_option, OptionInfo, cmd_opts, state: job / job_count with begin()
and end()), modules.paths, modules.sd_models (model_path, list_models() filling checkpoints_list, model_data.sd_model
with its sd_checkpoint_info; `Host.load_model` does what Forge's forge_model_reload does: the model resident, the
selection and opts.sd_checkpoint_hash set, on_model_loaded fired), modules.call_queue (queue_lock), the built-in
LoRA extension's flat `networks` module (list_available_networks() filling available_networks), Forge's
modules.ui_extra_networks_textual_inversion.embedding_db (load_textual_inversion_embeddings(force_reload,
sync_with_sd_model)), modules_forge.shared and launch (is_installed, run_pip). Each list refresh is recorded with
whether the host was generating at that moment."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HOST_MODULES = ("modules", "modules.script_callbacks", "modules.shared", "modules.paths", "modules.sd_models",
                "modules.call_queue", "modules.ui_extra_networks_textual_inversion", "modules_forge",
                "modules_forge.shared", "launch", "networks")


class CheckpointInfo:
    """modules.sd_models.CheckpointInfo as the state reads it: title `name [shorthash]` and sha256 (None until hashed)."""

    def __init__(self, title: str, sha256: str | None = None):
        self.title, self.sha256 = title, sha256


class SettingsTypeError(Exception):
    """What Forge's Settings tab raises (as a plain Exception) for an option it cannot make a component for."""


class State:
    """modules.shared_state.State's job fields: begin() sets job and job_count = -1, end() clears them."""

    def __init__(self) -> None:
        self.job, self.job_count = "", 0

    def begin(self, job: str = "(unknown)") -> None:
        self.job, self.job_count = job, -1

    def end(self) -> None:
        self.job, self.job_count = "", 0


def _files(folder: str | None, extensions: tuple[str, ...]) -> dict[str, str]:
    """name (relative, without extension) -> path, as the host's lists key them."""
    found: dict[str, str] = {}
    if folder and os.path.isdir(folder):
        for dirpath, _dirs, names in os.walk(folder):
            for name in names:
                if name.endswith(extensions):
                    path = os.path.join(dirpath, name)
                    found[os.path.splitext(os.path.relpath(path, folder))[0]] = path
    return found


class EmbeddingDatabase:
    """Forge's modules.textual_inversion.textual_inversion.EmbeddingDatabase as its refresh uses it."""

    def __init__(self, host: Host, folder: str | None):
        self.host, self.folder = host, folder
        self.word_embeddings: dict[str, str] = {}

    def load_textual_inversion_embeddings(self, force_reload: bool = False, sync_with_sd_model: bool = True) -> None:
        self.host.refreshed("embedding", force_reload=force_reload, sync_with_sd_model=sync_with_sd_model)
        self.word_embeddings = _files(self.folder, (".safetensors", ".pt", ".bin"))


class OptionInfo:
    """Forge's and A1111 1.7+'s signature (modules/options.py): `category_id` puts the section under a heading of
    the Settings tab; without one the section is listed under "Uncategorized"."""

    def __init__(self, default: Any = None, label: str = "", component: Any = None, component_args: Any = None,
                 onchange: Callable | None = None, section: tuple[str, str] | None = None, refresh: Callable | None = None,
                 comment_before: str = "", comment_after: str = "", infotext: str | None = None, restrict_api: bool = False,
                 category_id: str | None = None):
        self.default, self.label, self.section, self.category_id = default, label, section, category_id
        self.component = component


class OptionInfoBefore17:
    """A1111 1.6's OptionInfo: no categories."""

    def __init__(self, default: Any = None, label: str = "", component: Any = None, component_args: Any = None,
                 onchange: Callable | None = None, section: tuple[str, str] | None = None, refresh: Callable | None = None,
                 comment_before: str = "", comment_after: str = ""):
        self.default, self.label, self.section, self.category_id = default, label, section, None
        self.component = component


class Options:
    def __init__(self) -> None:
        object.__setattr__(self, "data_labels", {})
        object.__setattr__(self, "data", {})

    def add_option(self, key: str, info: OptionInfo) -> None:
        # the Settings tab (modules/ui_settings.py create_setting_component) makes components for these types only
        if info.component is None and type(info.default) not in (str, int, bool):
            raise SettingsTypeError(f"bad options item type: {type(info.default)} for key {key}")
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def __getattr__(self, key: str) -> Any:
        if key in self.data:
            return self.data[key]
        if key in self.data_labels:
            return self.data_labels[key].default
        raise AttributeError(key)

    def __setattr__(self, key: str, value: Any) -> None:
        self.data[key] = value


class Host:
    """The registered callbacks, the installed pip packages, and the host's modules."""

    def __init__(self, data_path: Path, models_path: Path, cmd_opts: dict[str, Any], controlnet_dir: Path | None):
        self.ui_tabs: list[Callable] = []
        self.ui_settings: list[Callable] = []
        self.app_started: list[Callable] = []
        self.model_loaded: list[Callable] = []
        self.installed: set[str] = set()
        self.pip_calls: list[str] = []
        self.refreshes: list[tuple[str, bool, dict[str, Any]]] = []  # (list, generating then, keywords)
        self.state = State()
        self.modules: dict[str, types.ModuleType] = {name: types.ModuleType(name) for name in HOST_MODULES}
        m = self.modules
        m["modules"].__path__ = []
        m["modules_forge"].__path__ = []
        m["modules.script_callbacks"].on_ui_tabs = self.ui_tabs.append
        m["modules.script_callbacks"].on_ui_settings = self.ui_settings.append
        m["modules.script_callbacks"].on_app_started = self.app_started.append
        m["modules.script_callbacks"].on_model_loaded = self.model_loaded.append
        m["modules.shared"].opts = Options()
        m["modules.shared"].OptionInfo = OptionInfo
        m["modules.shared"].cmd_opts = types.SimpleNamespace(**cmd_opts)
        m["modules.paths"].models_path = str(models_path)
        m["modules.paths"].data_path = str(data_path)
        m["modules.paths"].script_path = str(data_path)
        m["modules.shared"].state = self.state
        m["modules.sd_models"].model_path = str(models_path / "Stable-diffusion")
        m["modules.sd_models"].checkpoints_list = {}
        m["modules.sd_models"].list_models = self._list_models
        m["modules.sd_models"].model_data = types.SimpleNamespace(sd_model=None)
        m["modules.call_queue"].queue_lock = threading.Lock()
        m["networks"].available_networks = {}
        m["networks"].list_available_networks = self._list_available_networks
        m["modules.ui_extra_networks_textual_inversion"].embedding_db = EmbeddingDatabase(self, cmd_opts.get("embeddings_dir"))
        if controlnet_dir is not None:
            m["modules_forge.shared"].controlnet_dir = str(controlnet_dir)
        m["launch"].is_installed = lambda name: name in self.installed or importlib.util.find_spec(name) is not None and name not in self.missing
        m["launch"].run_pip = self._run_pip
        self.missing: set[str] = set()
        for name, module in m.items():
            if "." in name and name.rsplit(".", 1)[0] in m:
                parent, child = name.rsplit(".", 1)
                setattr(m[parent], child, module)

    def refreshed(self, what: str, **keywords: Any) -> None:
        self.refreshes.append((what, bool(self.state.job or self.state.job_count), keywords))

    def _list_models(self) -> None:
        self.refreshed("checkpoint")
        sd_models = self.modules["modules.sd_models"]
        sd_models.checkpoints_list = _files(sd_models.model_path, (".safetensors", ".ckpt", ".gguf"))

    def _list_available_networks(self) -> None:
        self.refreshed("lora")
        folder = getattr(self.modules["modules.shared"].cmd_opts, "lora_dir", None) or os.path.join(
            self.modules["modules.paths"].models_path, "Lora")
        self.modules["networks"].available_networks = _files(folder, (".safetensors", ".pt", ".ckpt"))

    @property
    def checkpoints(self) -> dict[str, str]:
        return self.modules["modules.sd_models"].checkpoints_list

    @property
    def loras(self) -> dict[str, str]:
        return self.modules["networks"].available_networks

    @property
    def embeddings(self) -> dict[str, str]:
        return self.modules["modules.ui_extra_networks_textual_inversion"].embedding_db.word_embeddings

    def _run_pip(self, command: str, desc: str | None = None) -> None:
        self.pip_calls.append(command)
        self.installed.add(command.split('"')[1].split(">")[0].replace("-", "_"))

    @property
    def opts(self) -> Options:
        return self.modules["modules.shared"].opts

    def load_model(self, title: str, sha256: str | None = None) -> None:
        """Forge's forge_model_reload: the checkpoint resident and selected, its hash in opts, on_model_loaded fired
        (in the caller's thread, as the host's generation thread fires it)."""
        info = CheckpointInfo(title, sha256)
        model = types.SimpleNamespace(sd_checkpoint_info=info)
        self.modules["modules.sd_models"].model_data.sd_model = model
        self.opts.sd_model_checkpoint = title
        self.opts.sd_checkpoint_hash = sha256
        for fn in self.model_loaded:
            fn(model)

    def settings_ui(self) -> None:
        for fn in self.ui_settings:
            fn()

    def start_app(self, demo: Any = None, app: Any = None) -> None:
        for fn in self.app_started:
            fn(demo, app)

    def tabs(self) -> list[tuple[Any, str, str]]:
        return [tab for fn in self.ui_tabs for tab in fn()]


@contextlib.contextmanager
def forge_host(tmp_path: Path, cmd_opts: dict[str, Any] | None = None, controlnet_dir: Path | None = None) -> Iterator[Host]:
    """Installs the stand-in modules in sys.modules for the duration; the webui data folder is tmp_path/webui."""
    webui = tmp_path / "webui"
    models = webui / "models"
    models.mkdir(parents=True, exist_ok=True)
    options = {"ckpt_dir": None, "vae_dir": None, "embeddings_dir": str(webui / "embeddings"), "hypernetwork_dir": None,
               **(cmd_opts or {})}
    host = Host(webui, models, options, controlnet_dir)
    saved = {name: sys.modules.get(name) for name in HOST_MODULES}
    sys.modules.update(host.modules)
    try:
        yield host
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@contextlib.contextmanager
def extension_host(tmp_path: Path, folders: tuple[str, ...] = (), register: bool = False,
                   **host_options: Any) -> Iterator[Host]:
    """`forge_host` with the extension's node service (a module global, as in the WebUI) reset before and stopped
    after; `folders` made under the WebUI data folder; the extension's callbacks registered when `register`."""
    from modelsync.extension import forge_callbacks

    forge_callbacks._service = None
    with forge_host(tmp_path, **host_options) as host:
        for folder in folders:
            (Path(host.modules["modules.paths"].data_path) / folder).mkdir(parents=True, exist_ok=True)
        if register:
            forge_callbacks.register()
        try:
            yield host
        finally:
            if forge_callbacks._service is not None:
                forge_callbacks._service.stop(timeout=60)
            forge_callbacks._service = None


def run_script(path: Path) -> types.ModuleType:
    """Loads an extension file by path the way the host's script loader does."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
