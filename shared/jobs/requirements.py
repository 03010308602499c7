"""What a job needs: every model a job names, in each form a job queue sends, and the same job in one node's names.

Forms (`format`): an A1111/Forge API body (`/sdapi/v1/txt2img`, `/img2img`), an infotext (the "parameters"
text), a StableQueue job, or an explicit list of requirements; "auto" tells them apart (text that starts with
`{` or `[` and has no infotext parameter line is JSON text: read as that JSON, or refused). One walk over the job
serves both reading (`extract`) and rewriting (`rewrite`), so a payload is rewritten exactly where it was read.

A1111's own rules, followed here:
- extra networks are `<(\\w+):([^>]+)>` with the type name case-sensitive (`lora`, its alias `lyco`, `hypernet`);
  the model name is the text before the first ':' (`<lora:NAME:W>`, `<lora:NAME:TE:UNET>`);
- a body's explicit field beats the same field taken from its `infotext` (`api.apply_infotext`);
- an infotext's `Model hash`, `Lora hashes` and `TI hashes` name content: the hash decides when some node has
  it, the name otherwise (the Lora extension's `infotext_pasted`);
- a checkpoint field takes any checkpoint alias: relative name, title `name [hash]`, model_name, stem, hash;
- ControlNet units that are disabled or whose model is "None" load nothing; a unit's model is `stem [autov1]`.
"""
from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

from ..names import normalise_name

FORMATS = ("auto", "a1111", "infotext", "stablequeue", "requirements")
MAX_REQUIREMENTS = 256
MAX_NAME_LENGTH = 1024
# a job's arrays and objects nest a handful deep; far below the depth where Python's JSON reading or writing
# (the dispatch answer echoes the job) runs out of recursion
MAX_JOB_DEPTH = 64

# reference kind -> the node-side kinds (names.kind_of) that satisfy it
KINDS: dict[str, frozenset[str]] = {
    "checkpoint": frozenset({"checkpoint"}),
    "lora": frozenset({"lora"}),
    "vae": frozenset({"vae"}),
    "embedding": frozenset({"embedding"}),
    "hypernetwork": frozenset({"hypernetwork"}),
    "controlnet": frozenset({"controlnet"}),
    "text_encoder": frozenset({"text_encoder"}),
    "upscaler": frozenset({"upscaler"}),
    "module": frozenset({"vae", "text_encoder"}),  # Forge's override_settings.forge_additional_modules
}
KIND_SYNONYMS = {"lycoris": "lora", "lyco": "lora", "locon": "lora", "textual_inversion": "embedding", "ti": "embedding",
                 "hypernet": "hypernetwork"}

# A hash's kind; "any" is told by its length: 8 AutoV1, 10 AutoV2, 12 AutoV3 or SHA256 prefix, 64 SHA256 or AutoV3.
HASH_LENGTHS: dict[str, tuple[int, ...]] = {
    "sha256": (64,),
    "autov1": (8,),
    "autov2": (10,),
    "autov3": (12, 64),
    "any": (8, 10, 12, 64),
}

_HEX = re.compile(r"^[0-9a-fA-F]+$")
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_NETWORK_KINDS = {"lora": "lora", "lyco": "lora", "hypernet": "hypernetwork"}
_BRACKET_HASH = re.compile(r"^(.*?)\s*\[([0-9a-fA-F]+)\]$")
_INFOTEXT_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_WORD = re.compile(r"\w+")
_NO_MODEL = frozenset({"", "none", "automatic", "use same checkpoint"})

A1111_PROMPT_FIELDS = ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt")
_INFOTEXT_PROMPTS = {"Hires prompt": "hr_prompt", "Hires negative prompt": "hr_negative_prompt"}
_STABLEQUEUE_PROMPT_FIELDS = ("positive_prompt", *A1111_PROMPT_FIELDS)
_STABLEQUEUE_HASH_FIELDS = {"model_hash": "any", "checkpoint_hash": "any", "hash": "any", "autov2_hash": "autov2",
                            "sha256_hash": "sha256"}
_STABLEQUEUE_MARKERS = frozenset({"generation_params", "generation_info_raw", "checkpoint_name", "sd_checkpoint",
                                  "positive_prompt", "raw_generation_info", "model_hash"})
_LIST_HASH_FIELDS = {"sha256": "sha256", "autov2": "autov2", "autov1": "autov1", "autov3": "autov3", "hash": "any"}


class JobFormatError(ValueError):
    """A job that cannot be read; `field` names the offending part (e.g. `job.alwayson_scripts.controlnet.args[0].model`)."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


def _expect(cond: bool, field_name: str, message: str) -> None:
    if not cond:
        raise JobFormatError(field_name, message)


@dataclass(frozen=True)
class HashRef:
    kind: str  # sha256 | autov1 | autov2 | autov3 | any
    value: str  # lower-case hex


@dataclass(frozen=True)
class ModelReference:
    """One model a job names: its kind and every identifier the job gives for it."""

    kind: str
    name: str | None = None
    hashes: tuple[HashRef, ...] = ()
    civitai_version_id: int | None = None
    name_may_be_hash: bool = False  # a checkpoint field: A1111 takes a hash there as well as a name
    hash_first: bool = False  # from an infotext: the hash decides when known, the name otherwise

    @property
    def key(self) -> tuple:
        """Equal for two references that must resolve alike (names compare normalised)."""
        name = normalise_name(self.name) if self.name else None
        return (self.kind, name, self.hashes, self.civitai_version_id, self.name_may_be_hash, self.hash_first)

    def describe(self) -> str:
        parts = [self.name] if self.name else []
        parts += [f"{h.kind}:{h.value}" if h.kind != "any" else h.value for h in self.hashes]
        if self.civitai_version_id is not None:
            parts.append(f"civitai_version_id:{self.civitai_version_id}")
        return " ".join(parts) if len(parts) < 2 else f"{parts[0]} [{', '.join(parts[1:])}]"


@dataclass
class Requirement:
    reference: ModelReference
    written: str  # as the job writes it where it first names it
    fields: list[str]  # every place the job names it


@dataclass(frozen=True)
class LocalName:
    """How one node names one model file, in each form a job may need."""

    name: str  # what a field or tag says on that node for this kind (checkpoint: its relative name; module: its path)
    stem: str
    file_name: str


@dataclass
class ParsedJob:
    format: str
    job: Any
    requirements: list[Requirement]
    embeddings: "EmbeddingNames"


@dataclass
class RewrittenJob:
    payload: Any
    # the settings that pin the job's checkpoint and VAE on that node (also for forms that cannot say them by name)
    override_settings: dict[str, str] = field(default_factory=dict)


class EmbeddingNames:
    """Embedding names, found in prompt text as A1111 applies them: whole words, any case, longest name first."""

    def __init__(self, names: Iterable[str] = ()):
        self.names = tuple(sorted({n.strip() for n in names if n and n.strip()}, key=lambda n: (-len(n), n)))
        self._by_first_word: dict[str, list[str]] = {}
        odd: list[str] = []
        for name in self.names:
            first = _WORD.match(name)
            if first is None:
                odd.append(name)
            else:
                self._by_first_word.setdefault(first.group(0).casefold(), []).append(name)
        self._odd = re.compile("|".join(map(re.escape, odd)), re.IGNORECASE) if odd else None

    def with_names(self, extra: Iterable[str]) -> "EmbeddingNames":
        return EmbeddingNames([*self.names, *extra])

    def find(self, text: str) -> Iterator[tuple[int, int]]:
        """Spans of embedding names in text, not overlapping, in order."""
        found: list[tuple[int, int]] = []
        end_of_last = 0
        for word in _WORD.finditer(text):
            start = word.start()
            if start < end_of_last:
                continue
            for name in self._by_first_word.get(word.group(0).casefold(), ()):
                end = start + len(name)
                if text[start:end].casefold() == name.casefold() and _boundary_after(text, end):
                    found.append((start, end))
                    end_of_last = end
                    break
        if self._odd is not None:
            for m in self._odd.finditer(text):
                if _boundary_before(text, m.start()) and _boundary_after(text, m.end()):
                    if not any(s < m.end() and m.start() < e for s, e in found):
                        found.append(m.span())
            found.sort()
        return iter(found)


def _boundary_after(text: str, end: int) -> bool:
    return end >= len(text) or not (text[end].isalnum() or text[end] == "_")


def _boundary_before(text: str, start: int) -> bool:
    return start == 0 or not (text[start - 1].isalnum() or text[start - 1] == "_")


def parse_hash(value: Any, kind: str, field_name: str) -> HashRef:
    _expect(isinstance(value, str) and value.strip() != "", field_name, "must be a hexadecimal hash")
    text = value.strip()
    _expect(bool(_HEX.match(text)), field_name, f"{text!r} is not hexadecimal")
    lengths = HASH_LENGTHS[kind]
    _expect(len(text) in lengths, field_name, f"must be {' or '.join(map(str, lengths))} hex digits, got {len(text)}")
    return HashRef(kind, text.lower())


def parse_kind(value: Any, field_name: str) -> str:
    """A model kind as a job or a query names it (synonyms such as `lycoris` or `ti` accepted)."""
    _expect(isinstance(value, str), field_name, f"is required: one of {', '.join(KINDS)}")
    kind = KIND_SYNONYMS.get(value.strip().lower(), value.strip().lower())
    _expect(kind in KINDS, field_name, f"{value!r} is not one of {', '.join(KINDS)}")
    return kind


def _maybe_hash(text: str) -> HashRef | None:
    return HashRef("any", text.lower()) if _HEX.match(text) and len(text) in HASH_LENGTHS["any"] else None


def _name(value: Any, field_name: str) -> str:
    _expect(isinstance(value, str), field_name, "must be a string")
    text = value.strip()
    _expect(bool(text), field_name, "must not be empty")
    _expect(len(text) <= MAX_NAME_LENGTH, field_name, f"is longer than {MAX_NAME_LENGTH} characters")
    return text


def _split_bracket_hash(text: str) -> tuple[str, str | None]:
    """'name [hash]' -> (name, hash); anything else -> (text, None)."""
    m = _BRACKET_HASH.match(text)
    if m and m.group(1) and len(m.group(2)) in HASH_LENGTHS["any"]:
        return m.group(1), m.group(2).lower()
    return text, None


def checkpoint_reference(text: str, hash_first: bool = False) -> ModelReference:
    """A checkpoint as a field names it: a title `name [hash]` (the hash must agree), or a name or a hash alone."""
    name, bracket = _split_bracket_hash(text)
    if bracket is not None:
        return ModelReference("checkpoint", name=name, hashes=(HashRef("any", bracket),), hash_first=hash_first)
    return ModelReference("checkpoint", name=name, name_may_be_hash=_maybe_hash(name) is not None)


def controlnet_reference(text: str) -> ModelReference:
    """ControlNet lists its models as `stem [model_hash]` (AutoV1, 8 hex)."""
    name, bracket = _split_bracket_hash(text)
    if bracket is None:
        return ModelReference("controlnet", name=name)
    return ModelReference("controlnet", name=name, hashes=(HashRef("autov1" if len(bracket) == 8 else "any", bracket),))


def _quote(text: str) -> str:
    """A1111's infotext quoting (infotext_utils.quote)."""
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def _unquote(text: str) -> tuple[str, bool]:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            value = json.loads(text)
        except ValueError:
            return text, False
        return (value, True) if isinstance(value, str) else (text, False)
    return text, False


@dataclass
class _Param:
    key: str
    value: str
    start: int
    end: int
    quoted: bool


def _infotext_params(text: str, start: int = 0, end: int | None = None) -> list[_Param]:
    params = []
    for m in _INFOTEXT_PARAM.finditer(text, start, len(text) if end is None else end):
        value, quoted = _unquote(m.group(2))
        params.append(_Param(m.group(1), value, m.start(2), m.end(2), quoted))
    return params


def _apply(text: str, replacements: list[tuple[int, int, str]]) -> str:
    for start, end, new in sorted(replacements, reverse=True):
        text = text[:start] + new + text[end:]
    return text


def _hash_list(param: _Param, field_name: str) -> dict[str, tuple[str, HashRef]]:
    """'a: 0123456789ab, b: ...' -> {normalised name: (name, hash)} (infotext `Lora hashes`, `TI hashes`)."""
    found: dict[str, tuple[str, HashRef]] = {}
    for entry in param.value.split(","):
        if not entry.strip():
            continue
        name, sep, value = entry.partition(":")
        _expect(bool(sep) and bool(name.strip()), field_name, f"entry {entry.strip()!r} is not 'name: hash'")
        found[normalise_name(name)] = (name.strip(), parse_hash(value, "any", field_name))
    return found


# (reference, field, as written) -> that node's names when rewriting, None when reading
Emit = Callable[[ModelReference, str, str], "LocalName | None"]


class _Walk:
    """One pass over a job in any form: every model reference goes through `emit`; what emit returns replaces it."""

    def __init__(self, emit: Emit, embeddings: EmbeddingNames):
        self.emit = emit
        self.embeddings = embeddings
        self.pinned: dict[str, str] = {}

    # --- the forms ---------------------------------------------------------------------------------------
    def a1111(self, body: Any, where: str, skip_checkpoint: bool = False) -> dict:
        _expect(isinstance(body, dict), where, "must be a JSON object (an A1111/Forge API body)")
        out = dict(body)
        overrides_value = body.get("override_settings")
        _expect(overrides_value is None or isinstance(overrides_value, dict), f"{where}.override_settings", "must be an object")
        overrides = dict(overrides_value or {})
        checkpoint_set = skip_checkpoint or overrides.get("sd_model_checkpoint") is not None
        if not skip_checkpoint and overrides.get("sd_model_checkpoint") is not None:
            local = self._checkpoint_field(overrides["sd_model_checkpoint"], f"{where}.override_settings.sd_model_checkpoint", pin=True)
            if local is not None:
                overrides["sd_model_checkpoint"] = local.name
        if overrides.get("sd_vae") is not None:
            local = self._vae_field(overrides["sd_vae"], f"{where}.override_settings.sd_vae")
            if local is not None:
                overrides["sd_vae"] = local.file_name
        if overrides.get("forge_additional_modules") is not None:
            overrides["forge_additional_modules"] = self._modules(overrides["forge_additional_modules"],
                                                                  f"{where}.override_settings.forge_additional_modules")
        for key in ("refiner_checkpoint", "hr_checkpoint_name"):
            if body.get(key) is not None:
                local = self._checkpoint_field(body[key], f"{where}.{key}")
                if local is not None:
                    out[key] = local.name
        for key in A1111_PROMPT_FIELDS:
            if body.get(key) is not None:
                out[key] = self._prompt_value(body[key], f"{where}.{key}")
        has_controlnet = False
        if body.get("alwayson_scripts") is not None:
            out["alwayson_scripts"], has_controlnet = self._alwayson_scripts(body["alwayson_scripts"], f"{where}.alwayson_scripts")
        if body.get("infotext") is not None:
            _expect(isinstance(body["infotext"], str), f"{where}.infotext", "must be a string")
            explicit = {k for k in (*A1111_PROMPT_FIELDS, "refiner_checkpoint", "hr_checkpoint_name") if k in body}
            explicit |= {"checkpoint"} if checkpoint_set else set()
            explicit |= {"vae"} if "sd_vae" in overrides else set()
            explicit |= {"controlnet"} if has_controlnet else set()
            out["infotext"], chosen = self.infotext(body["infotext"], f"{where}.infotext", frozenset(explicit))
            if chosen is not None:  # what the infotext's "Model hash" chose, pinned by name on this node
                overrides["sd_model_checkpoint"] = chosen.name
        if overrides or "override_settings" in body:
            out["override_settings"] = overrides
        return out

    def stablequeue(self, job: Any, where: str) -> dict:
        _expect(isinstance(job, dict), where, "must be a JSON object (a StableQueue job)")
        if "generation_params" not in job and "generation_info_raw" not in job:
            return self._stablequeue_params(job, where)
        out = dict(job)
        raw = job.get("generation_info_raw")
        _expect(raw is None or isinstance(raw, str), f"{where}.generation_info_raw", "must be a string")
        if raw and raw.strip():  # StableQueue's v2 API parses the raw text and ignores generation_params
            out["generation_info_raw"] = self.infotext(raw, f"{where}.generation_info_raw")[0]
            return out
        _expect(isinstance(job.get("generation_params"), dict), f"{where}.generation_params", "must be an object")
        out["generation_params"] = self._stablequeue_params(job["generation_params"], f"{where}.generation_params")
        return out

    def infotext(self, text: str, where: str, explicit: frozenset[str] = frozenset()) -> tuple[str, LocalName | None]:
        """The infotext with this node's names, and the checkpoint its `Model hash`/`Model` chose (rewriting only)."""
        body_start = len(text) - len(text.lstrip())
        lines: list[tuple[int, int]] = []
        position = body_start
        for line in text.strip().split("\n"):
            lines.append((position, position + len(line)))
            position += len(line) + 1
        params = _infotext_params(text, *lines[-1])
        if len(params) < 3:
            params = []
        else:
            lines.pop()
        by_key = {p.key: p for p in params}
        lora_hashes = _hash_list(by_key["Lora hashes"], f"{where}:Lora hashes") if "Lora hashes" in by_key else {}
        ti_hashes = _hash_list(by_key["TI hashes"], f"{where}:TI hashes") if "TI hashes" in by_key else {}
        embeddings = self.embeddings.with_names(name for name, _ in ti_hashes.values()) if ti_hashes else self.embeddings
        named: dict[str, str | None] = {}  # normalised name of each network and embedding used -> this node's name
        replacements: list[tuple[int, int, str]] = []

        negative = False
        for start, end in lines:
            line = text[start:end]
            label = re.match(r"\s*Negative prompt:", line)
            if label:
                negative = True
                start += label.end()
            if ("negative_prompt" if negative else "prompt") in explicit:
                continue
            part = f"{where}:{'negative prompt' if negative else 'prompt'}"
            replacements += self._prompt_spans(text, start, end, part, lora_hashes, ti_hashes, embeddings, named)

        chosen: LocalName | None = None
        if "checkpoint" not in explicit and ("Model" in by_key or "Model hash" in by_key):
            model, model_hash = by_key.get("Model"), by_key.get("Model hash")
            name = (model.value.strip() or None) if model else None
            hashes = (parse_hash(model_hash.value, "any", f"{where}:Model hash"),) if model_hash else ()
            local = None
            if name or hashes:
                reference = ModelReference("checkpoint", name=name, hashes=hashes, hash_first=True)
                local = self._emit(reference, f"{where}:{'Model hash' if hashes else 'Model'}", name or hashes[0].value)
            if local is not None:
                chosen = local
                self.pinned["sd_model_checkpoint"] = local.name
                if model is not None:
                    replacements.append((model.start, model.end, self._param_value(model, local.stem)))
        if "vae" not in explicit and "VAE" in by_key and by_key["VAE"].value.strip().casefold() not in _NO_MODEL:
            vae, vae_hash = by_key["VAE"], by_key.get("VAE hash")
            reference = ModelReference(
                "vae", name=vae.value.strip(),
                hashes=(parse_hash(vae_hash.value, "any", f"{where}:VAE hash"),) if vae_hash else (), hash_first=True,
            )
            local = self._emit(reference, f"{where}:VAE", vae.value)
            if local is not None:
                self.pinned["sd_vae"] = local.file_name
                replacements.append((vae.start, vae.end, self._param_value(vae, local.file_name)))
        for key, explicit_name in (("Hires checkpoint", "hr_checkpoint_name"), ("Refiner", "refiner_checkpoint")):
            param = by_key.get(key)
            if param is not None and explicit_name not in explicit and param.value.strip().casefold() not in _NO_MODEL:
                local = self._emit(checkpoint_reference(_name(param.value, f"{where}:{key}"), hash_first=True),
                                   f"{where}:{key}", param.value)
                if local is not None:
                    replacements.append((param.start, param.end, self._param_value(param, local.name)))
        for key, explicit_name in _INFOTEXT_PROMPTS.items():
            param = by_key.get(key)
            if param is not None and explicit_name not in explicit:
                spans = self._prompt_spans(param.value, 0, len(param.value), f"{where}:{key}", lora_hashes, ti_hashes,
                                           embeddings, named)
                if spans:
                    replacements.append((param.start, param.end, self._param_value(param, _apply(param.value, spans))))
        if "controlnet" not in explicit:
            for param in params:
                if re.fullmatch(r"ControlNet(?: \d+)?", param.key):
                    replacements += self._infotext_controlnet(param, f"{where}:{param.key}")

        for folded, (name, hash_ref) in ti_hashes.items():
            if folded not in named:  # the generation used it though no prompt word matched a known name
                local = self._emit(ModelReference("embedding", name=name, hashes=(hash_ref,), hash_first=True),
                                   f"{where}:TI hashes", name)
                named[folded] = local.name if local is not None else None
        for key, hashes in (("Lora hashes", lora_hashes), ("TI hashes", ti_hashes)):
            param = by_key.get(key)
            if param is not None and any(named.get(folded) for folded in hashes):
                entries = [f"{named.get(folded) or name}: {hash_ref.value}" for folded, (name, hash_ref) in hashes.items()]
                replacements.append((param.start, param.end, self._param_value(param, ", ".join(entries))))
        return _apply(text, replacements), chosen

    def requirements(self, items: Any, where: str) -> list:
        _expect(isinstance(items, list), where, "must be a list of requirements")
        out = []
        for i, item in enumerate(items):
            here = f"{where}[{i}]"
            _expect(isinstance(item, dict), here, 'must be an object like {"type": "lora", "sha256": "..."}')
            kind = parse_kind(item.get("type"), f"{here}.type")
            hashes = tuple(parse_hash(item[key], hash_kind, f"{here}.{key}")
                           for key, hash_kind in _LIST_HASH_FIELDS.items() if item.get(key) is not None)
            version = _civitai_version_id(item.get("civitai_version_id"), f"{here}.civitai_version_id")
            name = _name(item["name"], f"{here}.name") if item.get("name") is not None else None
            _expect(bool(name or hashes or version), here,
                    "needs one of name, sha256, autov2, autov1, autov3, hash, civitai_version_id")
            if name is not None and kind in ("checkpoint", "controlnet") and not hashes and version is None:
                reference = checkpoint_reference(name) if kind == "checkpoint" else controlnet_reference(name)
            else:
                reference = ModelReference(kind, name=name, hashes=hashes, civitai_version_id=version)
            written = name or (hashes[0].value if hashes else f"civitai_version_id:{version}")
            local = self._emit(reference, here, written)
            out.append({**item, "local_name": local.name} if local is not None else item)
        return out

    # --- the parts ---------------------------------------------------------------------------------------
    def _emit(self, reference: ModelReference, where: str, written: str) -> LocalName | None:
        return self.emit(reference, where, written.strip())

    def _checkpoint_field(self, value: Any, where: str, pin: bool = False) -> LocalName | None:
        _expect(isinstance(value, str), where, "must be a string")
        if value.strip().casefold() in _NO_MODEL:
            return None
        local = self._emit(checkpoint_reference(_name(value, where)), where, value)
        if local is not None and pin:
            self.pinned["sd_model_checkpoint"] = local.name
        return local

    def _vae_field(self, value: Any, where: str) -> LocalName | None:
        _expect(isinstance(value, str), where, 'must be a string: a VAE file name, "Automatic" or "None"')
        if value.strip().casefold() in _NO_MODEL:
            return None
        name, bracket = _split_bracket_hash(_name(value, where))
        reference = ModelReference("vae", name=name, hashes=(HashRef("any", bracket),) if bracket else ())
        local = self._emit(reference, where, value)
        if local is not None:
            self.pinned["sd_vae"] = local.file_name
        return local

    def _modules(self, value: Any, where: str) -> list:
        _expect(isinstance(value, list), where, "must be a list of file paths")
        out = []
        for i, path in enumerate(value):
            here = f"{where}[{i}]"
            text = _name(path, here)
            reference = ModelReference("module", name=posixpath.basename(text.replace("\\", "/")))
            local = self._emit(reference, here, text)
            out.append(local.name if local is not None else path)
        return out

    def _alwayson_scripts(self, scripts: Any, where: str) -> tuple[dict, bool]:
        _expect(isinstance(scripts, dict), where, "must be an object: script title -> {args: [...]}")
        out = dict(scripts)
        found = False
        for title, script in scripts.items():
            if title.strip().lower() != "controlnet":
                continue
            here = f"{where}.{title}"
            _expect(isinstance(script, dict), here, 'must be an object like {"args": [unit, ...]}')
            args = script.get("args")
            _expect(isinstance(args, list), f"{here}.args", "must be a list of ControlNet units")
            units = []
            for i, unit in enumerate(args):
                unit_where = f"{here}.args[{i}]"
                _expect(isinstance(unit, dict), unit_where, "must be an object (a ControlNet unit)")
                model = unit.get("model")
                if unit.get("enabled") is False or model is None:
                    units.append(unit)
                    continue
                _expect(isinstance(model, str), f"{unit_where}.model", "must be a string")
                if model.strip().casefold() in _NO_MODEL:
                    units.append(unit)
                    continue
                found = True
                local = self._emit(controlnet_reference(_name(model, f"{unit_where}.model")), f"{unit_where}.model", model)
                units.append({**unit, "model": local.name} if local is not None else unit)
            out[title] = {**script, "args": units}
        return out, found

    def _infotext_controlnet(self, param: _Param, where: str) -> list[tuple[int, int, str]]:
        inner = next((p for p in _infotext_params(param.value) if p.key == "Model"), None)
        if inner is None or inner.value.strip().casefold() in _NO_MODEL:
            return []
        local = self._emit(controlnet_reference(_name(inner.value, where)), where, inner.value)
        if local is None:
            return []
        value = _apply(param.value, [(inner.start, inner.end, local.name)])
        return [(param.start, param.end, self._param_value(param, value))]

    @staticmethod
    def _param_value(param: _Param, value: str) -> str:
        return json.dumps(value, ensure_ascii=False) if param.quoted else _quote(value)

    def _prompt_value(self, value: Any, where: str) -> Any:
        if isinstance(value, list):
            _expect(all(isinstance(v, str) for v in value), where, "must be a string or a list of strings")
            return [_apply(v, self._prompt_spans(v, 0, len(v), where)) for v in value]
        _expect(isinstance(value, str), where, "must be a string")
        return _apply(value, self._prompt_spans(value, 0, len(value), where))

    def _prompt_spans(
        self,
        text: str,
        start: int,
        end: int,
        where: str,
        lora_hashes: Mapping[str, tuple[str, HashRef]] | None = None,
        ti_hashes: Mapping[str, tuple[str, HashRef]] | None = None,
        embeddings: EmbeddingNames | None = None,
        named: dict[str, str | None] | None = None,
    ) -> list[tuple[int, int, str]]:
        """Replacements (span, new name) for the extra networks and embeddings in text[start:end]."""
        replacements: list[tuple[int, int, str]] = []
        tags: list[tuple[int, int]] = []
        for m in _EXTRA_NETWORK.finditer(text, start, end):
            tags.append(m.span())
            kind = _NETWORK_KINDS.get(m.group(1))
            if kind is None:
                continue
            raw = m.group(2).split(":", 1)[0]
            _expect(bool(raw.strip()), where, f"{m.group(0)!r} names no model")
            _expect(len(raw) <= MAX_NAME_LENGTH, where, f"a name in {m.group(0)[:40]!r}... is too long")
            hashed = (lora_hashes or {}).get(normalise_name(raw)) if kind == "lora" else None
            reference = ModelReference(kind, name=raw.strip(), hashes=(hashed[1],) if hashed else (), hash_first=hashed is not None)
            local = self._emit(reference, where, m.group(0))
            if local is not None:
                replacements.append((m.start(2), m.start(2) + len(raw), local.name))
            if named is not None:
                named[normalise_name(raw)] = local.name if local is not None else None
        for s, e in (embeddings or self.embeddings).find(text[start:end]):
            s, e = s + start, e + start
            if any(ts < e and s < te for ts, te in tags):
                continue
            written = text[s:e]
            hashed = (ti_hashes or {}).get(normalise_name(written))
            reference = ModelReference("embedding", name=written, hashes=(hashed[1],) if hashed else (), hash_first=hashed is not None)
            local = self._emit(reference, where, written)
            if local is not None:
                replacements.append((s, e, local.name))
            if named is not None:
                named[normalise_name(written)] = local.name if local is not None else None
        return replacements

    def _stablequeue_params(self, params: Any, where: str) -> dict:
        _expect(isinstance(params, dict), where, "must be an object (StableQueue generation_params)")
        raw = params.get("raw_generation_info")
        _expect(raw is None or isinstance(raw, str), f"{where}.raw_generation_info", "must be a string")
        if raw and raw.strip():  # StableQueue's dispatcher replaces the parameters with what the raw text says
            return {**params, "raw_generation_info": self.infotext(raw, f"{where}.raw_generation_info")[0]}
        out = dict(params)
        name_field = next((k for k in ("checkpoint_name", "sd_checkpoint") if params.get(k) is not None), None)
        hashes: list[HashRef] = []
        fields: list[str] = []
        for key, hash_kind in _STABLEQUEUE_HASH_FIELDS.items():
            if params.get(key) not in (None, ""):
                hashes.append(parse_hash(params[key], hash_kind, f"{where}.{key}"))
                fields.append(f"{where}.{key}")
        for holder in ("checkpoint", "model_info"):
            nested = params.get(holder)
            if isinstance(nested, dict) and nested.get("hash") not in (None, ""):
                hashes.append(parse_hash(nested["hash"], "any", f"{where}.{holder}.hash"))
                fields.append(f"{where}.{holder}.hash")
        version = _civitai_version_id(params.get("civitai_version_id"), f"{where}.civitai_version_id")
        if version is not None:
            fields.append(f"{where}.civitai_version_id")
        reference: ModelReference | None = None
        if name_field is not None:
            fields.insert(0, f"{where}.{name_field}")
            text = _name(params[name_field], f"{where}.{name_field}")
            base = checkpoint_reference(text)
            if hashes or version is not None:
                reference = ModelReference("checkpoint", name=base.name, hashes=(*base.hashes, *dict.fromkeys(hashes)),
                                           civitai_version_id=version)
            else:
                reference = base
        elif hashes or version is not None:
            reference = ModelReference("checkpoint", hashes=tuple(dict.fromkeys(hashes)), civitai_version_id=version)
        local = None
        if reference is not None:
            written = params[name_field] if name_field else (hashes[0].value if hashes else f"civitai_version_id:{version}")
            local = self._emit(reference, fields[0], written)
            for extra in fields[1:]:
                self._emit(reference, extra, written)
            if local is not None:
                self.pinned["sd_model_checkpoint"] = local.name
                out[name_field or "checkpoint_name"] = local.name  # a hash alone would leave the node's loaded model
        if params.get("positive_prompt") is not None:
            out["positive_prompt"] = self._prompt_value(params["positive_prompt"], f"{where}.positive_prompt")
        rest = self.a1111({k: v for k, v in out.items() if k != "positive_prompt"}, where, skip_checkpoint=reference is not None)
        return {**out, **rest}


def _civitai_version_id(value: Any, field_name: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    _expect(isinstance(value, int) and not isinstance(value, bool) and value > 0, field_name, "must be a positive integer")
    return value


def detect_format(job: Any) -> str:
    if isinstance(job, list):
        return "requirements"
    if isinstance(job, str):
        return "infotext"
    if isinstance(job, dict):
        return "stablequeue" if _STABLEQUEUE_MARKERS & job.keys() else "a1111"
    raise JobFormatError("job", "must be an A1111/Forge API body or a StableQueue job (objects), an infotext (a string) "
                                "or a list of requirements")


def _has_parameter_line(text: str) -> bool:
    """Whether the text ends in an infotext's parameter line (`Steps: 20, Sampler: Euler, ...`): a line of its own
    after the prompt, starting with a `key:` and holding three or more of them (A1111's rule). No JSON text's
    last line starts with a bare `key:`."""
    lines = text.strip().split("\n")
    return len(lines) > 1 and _INFOTEXT_PARAM.match(lines[-1]) is not None and len(_infotext_params(lines[-1])) >= 3


def _json_text_or_infotext(text: str) -> Any:
    """A job given as text (format auto): JSON when it starts with `{` or `[` and has no infotext parameter line,
    else the infotext itself. A prompt may start with `[` or `{`: with its parameter line it stays an infotext."""
    if not text.lstrip().startswith(("{", "[")) or _has_parameter_line(text):
        return text
    hint = ('a text that starts with "{" or "[" and has no infotext parameter line (Steps: ...) is read as JSON; '
            'send "format": "infotext" to read it as an infotext')
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise JobFormatError("job", f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} ({hint})") \
            from None
    except RecursionError:
        raise JobFormatError("job", f"is JSON nested too deeply to read ({hint})") from None


def _expect_shallow(job: Any) -> None:
    stack = [(job, 1)] if isinstance(job, (dict, list)) else []
    while stack:
        value, depth = stack.pop()
        _expect(depth <= MAX_JOB_DEPTH, "job", f"nests arrays or objects more than {MAX_JOB_DEPTH} deep")
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def _walk(job: Any, fmt: str, walk: _Walk) -> Any:
    if fmt == "a1111":
        return walk.a1111(job, "job")
    if fmt == "stablequeue":
        return walk.stablequeue(job, "job")
    if fmt == "infotext":
        _expect(isinstance(job, str) and job.strip() != "", "job", "must be the infotext (a non-empty string)")
        return walk.infotext(job, "job")[0]
    return walk.requirements(job, "job")


def extract(job: Any, fmt: str = "auto", embeddings: EmbeddingNames | None = None) -> ParsedJob:
    """Every model the job names, once each (with every place it is named); raises JobFormatError naming the field."""
    _expect(fmt in FORMATS, "format", f"must be one of {', '.join(FORMATS)}")
    embeddings = embeddings or EmbeddingNames()
    if fmt == "auto" and isinstance(job, str):
        job = _json_text_or_infotext(job)
    _expect_shallow(job)
    fmt = detect_format(job) if fmt == "auto" else fmt
    requirements: dict[tuple, Requirement] = {}

    def collect(reference: ModelReference, where: str, written: str) -> None:
        found = requirements.get(reference.key)
        if found is None:
            _expect(len(requirements) < MAX_REQUIREMENTS, "job", f"names more than {MAX_REQUIREMENTS} models")
            requirements[reference.key] = Requirement(reference, written, [where])
        elif where not in found.fields:
            found.fields.append(where)
        return None

    _walk(job, fmt, _Walk(collect, embeddings))
    return ParsedJob(fmt, job, list(requirements.values()), embeddings)


def rewrite(parsed: ParsedJob, names: Mapping[tuple, LocalName]) -> RewrittenJob:
    """The job with every model named as one node names it (`names`: reference key -> that node's names)."""
    walk = _Walk(lambda reference, where, written: names.get(reference.key), parsed.embeddings)
    payload = _walk(parsed.job, parsed.format, walk)
    return RewrittenJob(payload, dict(walk.pinned))
