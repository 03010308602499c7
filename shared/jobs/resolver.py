"""A job's model references resolved against the registry as A1111/Forge resolves them on each node, and the
answers a job queue asks for: can the job run and where (availability), can it run on this node and with which
names (dispatch), which model is it (verify), which missing models jobs want most.

A name resolves through `model_aliases` (every name A1111/Forge accepts for a file on a node, normalised: case
folded, `\\` = `/`); a hash through the models' hash columns: SHA256, AutoV2, AutoV1, AutoV3 (addnet), and a
12-hex short hash as AutoV3's or SHA256's first 12 (A1111 writes the former, Forge the latter). A reference
resolves only to models some node holds as the right kind (`names.kind_of`), or, by hash, to a model no node
holds. More than one model → ambiguous, with the candidates; a name and a hash naming different models →
conflict. Nothing is guessed.

A name alone that names different content on different nodes (two nodes each holding their own `sdxl_vae`) is a
`name_conflict` rather than ambiguous when each such node holds exactly one model of that name: A1111 on that
node loads its own, so the job runs there (with a warning naming the other nodes' content); a node holding
several is still ambiguous. With `name_conflicts="strict"` (MODELSYNC_NAME_CONFLICTS) it is ambiguous everywhere.
Such a reference never identifies content for the fleet: it is not a reason to copy or download a model.
"""
from __future__ import annotations

import functools
import posixpath
import re
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, NamedTuple, Protocol

import sqlite_utils

from ..catalog import TIME_FORMAT, chunks, placeholders, utc_now, write_transaction
from ..names import aliases, kind_of, normalise_name, stem, strip_extension
from .requirements import (
    KINDS,
    EmbeddingNames,
    HashRef,
    LocalName,
    ModelReference,
    ParsedJob,
    Requirement,
    rewrite,
)

ACTIONS = ("retry_later", "route_elsewhere", "fail")
NAME_CONFLICT_MODES = ("per-node", "strict")
LAST_USED_GRANULARITY_SECONDS = 60  # an approved dispatch writes last_used at most once a minute per model
_WINDOWS_PATH = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")
# most specific first: what a name matched is reported as the first of these
_ALIAS_ORDER = ("rel_name", "rel_stem", "model_name", "file_name", "stem", "output_name")
# the alias a node's local name is looked up by in A1111, for kinds whose local name is not unique on a node
_CLASH_ALIAS = {"lora": "stem", "embedding": "stem", "hypernetwork": "stem", "vae": "file_name", "controlnet": "stem"}
_MODEL_COLUMNS = ("id", "name", "filename", "type", "base", "hash_sha256", "hash_autov1", "hash_autov2", "hash_autov3",
                  "civitai_id", "civitai_version_id", "civitai_model_name", "last_used")


# --- the fleet ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeInfo:
    server_id: str
    display_name: str | None
    api_url: str | None
    online: bool
    last_contact: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"server_id": self.server_id, "display_name": self.display_name, "api_url": self.api_url,
                "online": self.online, "last_contact": self.last_contact}


def load_nodes(db: sqlite_utils.Database, is_online: Callable[[str, str | None, str | None], bool]) -> dict[str, NodeInfo]:
    """Every registered node; `is_online(server_id, last_sync, last_heartbeat)` is the server's liveness rule."""
    rows = db.conn.execute("SELECT id, display_name, api_url, last_sync, last_heartbeat FROM servers ORDER BY id").fetchall()
    return {
        sid: NodeInfo(sid, name, url, is_online(sid, sync, beat), max(sync or "", beat or "") or None)
        for sid, name, url, sync, beat in rows
    }


class UnknownNode(KeyError):
    pass


# --- what the registry knows ---------------------------------------------------------------------------------
class FileCopy(NamedTuple):
    """One file of a model on one node."""

    server_id: str
    path: str
    rel_name: str
    kind: str


@dataclass
class ModelMatch:
    row: dict[str, Any]
    matched_by: list[str] = field(default_factory=list)
    copies: dict[str, FileCopy] = field(default_factory=dict)  # server_id -> its first copy (by path) of the kind

    @property
    def id(self) -> int:
        return self.row["id"]

    def summary(self) -> dict[str, Any]:
        r = self.row
        return {"id": r["id"], "name": r["name"], "filename": r["filename"], "type": r["type"], "base": r["base"],
                "sha256": r["hash_sha256"], "autov2": r["hash_autov2"], "autov1": r["hash_autov1"],
                "autov3": r["hash_autov3"], "civitai_id": r["civitai_id"], "civitai_version_id": r["civitai_version_id"],
                "civitai_model_name": r["civitai_model_name"], "matched_by": self.matched_by}


@dataclass
class Resolution:
    requirement: Requirement
    # resolved | name_conflict (a name alone, different content per node: `by_node`) | ambiguous | unknown | conflict
    status: str
    reason: str
    match_type: str | None = None
    model: ModelMatch | None = None
    candidates: list[ModelMatch] = field(default_factory=list)
    # name_conflict: node -> the one candidate that node holds under the name (what A1111 there loads), and
    # candidate -> every node naming it so (a node naming several is ambiguous there)
    by_node: dict[str, ModelMatch] = field(default_factory=dict)
    named_by: dict[int, list[str]] = field(default_factory=dict)
    # nodes that hold the model but whose name for it also names another model of its kind there
    clashes: set[str] = field(default_factory=set)
    # nodes listing a file under the referenced name that they have not hashed yet (the model is on its way)
    pending_on: list[str] = field(default_factory=list)
    _local_names: dict[str, LocalName] = field(default_factory=dict, repr=False)

    @property
    def reference(self) -> ModelReference:
        return self.requirement.reference

    @property
    def held(self) -> bool:
        return bool(self.by_node) or (self.model is not None and bool(self.model.copies))

    def model_on(self, server_id: str | None) -> ModelMatch | None:
        """The model this reference loads on that node (the fleet's one model, or that node's own); for no node
        in particular, the fleet's one model if there is one."""
        return self.by_node.get(server_id) if self.status == "name_conflict" else self.model

    def usable_on(self, server_id: str) -> bool:
        model = self.model_on(server_id)
        return model is not None and server_id in model.copies and server_id not in self.clashes

    def holders(self) -> list[str]:
        nodes = self.by_node if self.status == "name_conflict" else self.model.copies if self.model else {}
        return sorted(s for s in nodes if s not in self.clashes)

    def local_name(self, server_id: str) -> LocalName:
        found = self._local_names.get(server_id)
        if found is None:
            model = self.model_on(server_id)
            assert model is not None
            found = self._local_names[server_id] = node_local_name(self.reference.kind, model.copies[server_id], model.row)
        return found

    def why_missing_on(self, server_id: str) -> str:
        if self.status == "name_conflict" and server_id not in self.by_node:
            if any(server_id in nodes for nodes in self.named_by.values()):  # it names several models so
                return "ambiguous"
            return "pending" if server_id in self.pending_on else "not_on_node"
        if self.status not in ("resolved", "name_conflict"):
            return self.status
        if server_id in self.clashes:
            return "name_clash"
        return "pending" if server_id in self.pending_on else "not_on_node"


def node_local_name(kind: str, copy: FileCopy, model: dict[str, Any]) -> LocalName:
    """The name this node's A1111/Forge knows the file by, for a job field of `kind`.

    Checkpoint: its relative name in the node's own separators, the one alias A1111 always registers (the title
    `name [hash]` exists there only once the node has hashed the file itself). VAE: its file name. ControlNet:
    `stem [AutoV1]` as the extension lists it. Forge modules: the full path. Others: the stem.
    """
    if kind in ("module", "text_encoder"):
        names = _local_name("vae", copy.rel_name, False, None)
        return LocalName(copy.path, names.stem, names.file_name)
    windows = kind == "checkpoint" and _WINDOWS_PATH.match(copy.path) is not None
    return _local_name(kind, copy.rel_name, windows, model.get("hash_autov1") if kind == "controlnet" else None)


@functools.lru_cache(maxsize=65536)  # a fleet's nodes mostly share relative names
def _local_name(kind: str, rel_name: str, windows: bool, autov1: str | None) -> LocalName:
    rel = rel_name.replace("\\", "/")
    file_stem, file_name = stem(rel), posixpath.basename(rel)
    if kind == "checkpoint":
        name = rel.replace("/", "\\") if windows else rel
    elif kind == "vae":
        name = file_name
    elif kind == "controlnet" and autov1:
        name = f"{file_stem} [{autov1}]"
    else:
        name = file_stem
    return LocalName(name, file_stem, file_name)


def _title(copy: FileCopy, model: dict[str, Any]) -> str:
    return f"{node_local_name('checkpoint', copy, model).name} [{model['hash_autov2']}]"


def _alias_rows(db: sqlite_utils.Database, names: list[str]) -> dict[str, list[tuple[str, int, str]]]:
    """normalised name -> (alias kind, model_id, server_id) for every file any node names so."""
    found: dict[str, list[tuple[str, int, str]]] = {}
    for chunk in chunks(names):
        sql = f"SELECT alias, kind, model_id, server_id FROM model_aliases WHERE alias IN ({placeholders(chunk)})"
        for alias, alias_kind, model_id, server_id in db.conn.execute(sql, chunk):
            found.setdefault(alias, []).append((alias_kind, model_id, server_id))
    return found


def _hash_queries(ref: HashRef) -> list[tuple[str, str, list[str]]]:
    """(match type, SQL condition, parameters) for one hash; short AutoV3/SHA256 hashes match as prefixes."""
    v = ref.value
    prefix = lambda column: f"{column} >= ? AND {column} < ?"  # noqa: E731  (lower-case hex: p <= x < p+'g')
    queries = []
    if len(v) == 64 and ref.kind in ("sha256", "any"):
        queries.append(("sha256", "hash_sha256 = ?", [v]))
    if len(v) == 64 and ref.kind in ("autov3", "any"):
        queries.append(("autov3", "hash_autov3 = ?", [v]))
    if len(v) == 12 and ref.kind in ("autov3", "any"):
        queries.append(("autov3", prefix("hash_autov3"), [v, v + "g"]))
    if len(v) == 12 and ref.kind == "any":
        queries.append(("sha256_12", prefix("hash_sha256"), [v, v + "g"]))
    if len(v) == 10 and ref.kind in ("autov2", "any"):
        queries.append(("autov2", "hash_autov2 = ?", [v]))
    if len(v) == 8 and ref.kind in ("autov1", "any"):
        queries.append(("autov1", "hash_autov1 = ?", [v]))
    return queries


def _hash_hits(db: sqlite_utils.Database, refs: Iterable[HashRef]) -> dict[HashRef, dict[int, str]]:
    hits: dict[HashRef, dict[int, str]] = {}
    for ref in set(refs):
        found: dict[int, str] = {}
        for match_type, condition, params in _hash_queries(ref):
            for (model_id,) in db.conn.execute(f"SELECT id FROM models WHERE {condition}", params):
                found.setdefault(model_id, match_type)
        hits[ref] = found
    return hits


def _version_hits(db: sqlite_utils.Database, versions: Iterable[int]) -> dict[int, set[int]]:
    return {v: {row[0] for row in db.conn.execute("SELECT id FROM models WHERE civitai_version_id = ?", [v])}
            for v in set(versions)}


def _models(db: sqlite_utils.Database, ids: list[int]) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    for chunk in chunks(ids):
        sql = f"SELECT {', '.join(_MODEL_COLUMNS)} FROM models WHERE id IN ({placeholders(chunk)})"
        for values in db.conn.execute(sql, chunk):
            found[values[0]] = dict(zip(_MODEL_COLUMNS, values))
    return found


def _copies(db: sqlite_utils.Database, models: dict[int, dict[str, Any]]) -> dict[int, list[FileCopy]]:
    found: dict[int, list[FileCopy]] = {model_id: [] for model_id in models}
    for chunk in chunks(list(models)):
        sql = f"""SELECT model_id, server_id, path, rel_name, role, content_type FROM model_server_availability
                  WHERE model_id IN ({placeholders(chunk)})"""
        for model_id, server_id, path, rel_name, role, content_type in db.conn.execute(sql, chunk):
            kind = _kind(role, content_type or models[model_id]["type"])
            found[model_id].append(FileCopy._make((server_id, path, rel_name, kind)))
    return found


_kind = functools.lru_cache(maxsize=1024)(kind_of)  # a handful of (role, content type) pairs, hundreds of copies


# --- resolving ---------------------------------------------------------------------------------------------
@dataclass
class _Registry:
    """What one resolve call read, for all the job's references at once."""

    aliases: dict[str, list[tuple[str, int, str]]]
    hashes: dict[HashRef, dict[int, str]]
    versions: dict[int, set[int]]
    models: dict[int, dict[str, Any]]
    copies: dict[int, list[FileCopy]]
    kinds_on: dict[int, dict[str, set[str]]]  # model -> node -> the kinds its copies there have


def _label(r: ModelReference) -> str:
    return f"{r.kind} {r.describe()!r}"


def _kind_copies(copies: list[FileCopy], accepted: frozenset[str]) -> dict[str, FileCopy]:
    """Each node's first copy (by path) of the accepted kinds."""
    found: dict[str, FileCopy] = {}
    for copy in copies:
        if copy.kind in accepted:
            first = found.get(copy.server_id)
            if first is None or copy.path < first.path:
                found[copy.server_id] = copy
    return found


def _of_kind(model_id: int, reg: _Registry, accepted: frozenset[str]) -> bool:
    copies = reg.copies.get(model_id, [])
    if copies:
        return any(c.kind in accepted for c in copies)
    model_type = reg.models[model_id]["type"]  # held by no node: the content says what it is, when known
    return model_type is None or kind_of(None, model_type) in accepted


def _name_matches(ref: ModelReference, reg: _Registry) -> tuple[dict[int, list[str]], set[int]]:
    """Models any node names so as the reference's kind (with the alias kinds that matched), and models named so
    only as another kind."""
    accepted = KINDS[ref.kind]
    matches: dict[int, set[str]] = {}
    other_kind: set[int] = set()
    name = normalise_name(ref.name or "")
    for alias_kind, model_id, server_id in reg.aliases.get(name, ()):
        if reg.kinds_on[model_id].get(server_id, set()) & accepted:
            matches.setdefault(model_id, set()).add(alias_kind)
        else:
            other_kind.add(model_id)
    if ref.name_may_be_hash:  # A1111's checkpoint aliases hold hashes beside names
        for model_id, match_type in reg.hashes.get(HashRef("any", name), {}).items():
            if _of_kind(model_id, reg, accepted):
                matches.setdefault(model_id, set()).add(match_type)
    ordered = {m: sorted(kinds, key=lambda k: _ALIAS_ORDER.index(k) if k in _ALIAS_ORDER else -1)
               for m, kinds in matches.items()}
    return ordered, other_kind - set(matches)


def _named_on(ref: ModelReference, reg: _Registry, ids: Iterable[int]) -> dict[str, set[int]]:
    """node -> which of these models that node itself names so, as the reference's kind."""
    accepted, wanted = KINDS[ref.kind], set(ids)
    name = normalise_name(ref.name or "")
    found: dict[str, set[int]] = {}
    for _, model_id, server_id in reg.aliases.get(name, ()):
        if model_id in wanted and reg.kinds_on[model_id].get(server_id, set()) & accepted:
            found.setdefault(server_id, set()).add(model_id)
    if ref.name_may_be_hash:  # a hash names the model on every node holding it
        for model_id in wanted & reg.hashes.get(HashRef("any", name), {}).keys():
            for server_id, kinds in reg.kinds_on.get(model_id, {}).items():
                if kinds & accepted:
                    found.setdefault(server_id, set()).add(model_id)
    return found


def _resolve_one(requirement: Requirement, reg: _Registry, per_node: bool) -> Resolution:
    ref = requirement.reference
    accepted = KINDS[ref.kind]
    by_name, other_kind = _name_matches(ref, reg) if ref.name else ({}, set())
    identifiers: list[dict[int, str]] = [reg.hashes[h] for h in ref.hashes]
    if ref.civitai_version_id is not None:
        identifiers.append({m: "civitai_version_id" for m in reg.versions[ref.civitai_version_id]})

    def match(model_id: int, matched_by: list[str]) -> ModelMatch:
        return ModelMatch(reg.models[model_id], matched_by, _kind_copies(reg.copies.get(model_id, []), accepted))

    def decide(ids: dict[int, list[str]], how: str, note: str = "") -> Resolution:
        if len(ids) == 1:
            (model_id, matched_by), = ids.items()
            found = match(model_id, matched_by)
            where = f"on {len(found.copies)} node(s)" if found.copies else "known to the registry, but no node holds it"
            return Resolution(requirement, "resolved", f"{_label(ref)} is model {model_id} by {how}{note}, {where}",
                              matched_by[0] if matched_by else how, found)
        candidates = [match(m, by) for m, by in sorted(ids.items())]
        if per_node and how == "name":
            by_id = {c.id: c for c in candidates}
            named_on = _named_on(ref, reg, ids)
            by_node = {node: by_id[model_id] for node, (model_id, *more) in named_on.items()
                       if not more and node in by_id[model_id].copies}
            if by_node:
                named_by: dict[int, list[str]] = {c.id: [] for c in candidates}
                for node in sorted(named_on):
                    for model_id in named_on[node]:
                        named_by[model_id].append(node)
                return Resolution(requirement, "name_conflict",
                                  f"{_label(ref)} names {len(candidates)} different models on different nodes{note}; "
                                  f"by name alone each of {len(by_node)} node(s) loads its own (name it by SHA256 to "
                                  f"choose one)", how, candidates=candidates, by_node=by_node, named_by=named_by)
        return Resolution(requirement, "ambiguous",
                          f"{_label(ref)} names {len(candidates)} different models; name it by SHA256 to choose",
                          how, candidates=candidates)

    if not identifiers:
        if by_name:
            return decide(by_name, "name")
        reason = f"no node has a {ref.kind} named {ref.describe()!r}"
        if other_kind:
            kinds = sorted({c.kind for m in other_kind for c in reg.copies.get(m, [])})
            reason += f" (there that name is of another kind: {' / '.join(kinds)})"
        return Resolution(requirement, "unknown", reason)

    strong = set.intersection(*(set(ids) for ids in identifiers))
    strong_of_kind = {m: [ids[m] for ids in identifiers] for m in sorted(strong) if _of_kind(m, reg, accepted)}
    if not strong_of_kind:
        what = "hash" if ref.hashes else "Civitai version"
        if by_name and ref.hash_first:
            return decide(by_name, "name", f" (the {what} {ref.describe()!r} is unknown)")
        if by_name:
            return Resolution(requirement, "conflict",
                              f"{_label(ref)}: the name is model {', '.join(map(str, by_name))} but no such model has "
                              f"that {what}", candidates=[match(m, by) for m, by in sorted(by_name.items())])
        reason = f"no model with {ref.describe()!r} is known" if not strong else f"{ref.describe()!r} is not a {ref.kind}"
        return Resolution(requirement, "unknown", reason)
    if by_name:
        agreed = {m: [*how, *by_name[m]] for m, how in strong_of_kind.items() if m in by_name}
        if agreed:
            strong_of_kind = agreed
        elif not ref.hash_first:
            both = {**by_name, **strong_of_kind}
            return Resolution(requirement, "conflict", f"{_label(ref)}: the name and the hash name different models",
                              candidates=[match(m, by) for m, by in sorted(both.items())])
    return decide(strong_of_kind, "hash" if ref.hashes else "civitai_version_id")


def _mark_clashes(db: sqlite_utils.Database, resolutions: list[Resolution], reg: _Registry) -> None:
    """A node whose name for the model (a stem, a VAE file name) also names another model of that kind there
    cannot be told to load exactly this one. Only names that more than one model holds on some node matter."""
    shared_names: dict[str, dict[tuple[str, str], set[int]]] = {}  # name -> (alias kind, node) -> its models, if several

    def shared(name: str) -> dict[tuple[str, str], set[int]]:
        if name not in shared_names:
            found: dict[tuple[str, str], set[int]] = {}
            for alias_kind, model_id, server_id in reg.aliases[name]:
                found.setdefault((alias_kind, server_id), set()).add(model_id)
            shared_names[name] = {key: models for key, models in found.items() if len(models) > 1}
        return shared_names[name]

    unread: dict[tuple[str, str], list[tuple[Resolution, str]]] = {}  # (alias kind, name) -> (resolution, node)
    for res in resolutions:
        alias_kind = _CLASH_ALIAS.get(res.reference.kind)
        if alias_kind is None:
            continue
        accepted = KINDS[res.reference.kind]
        # for these kinds the local name depends on the rel_name only: (model, rel_name) -> the nodes that load it so
        nodes_by_rel_name: dict[tuple[int, str], list[str]] = {}
        if res.status == "name_conflict":
            loaded = list(res.by_node.items())
        else:
            loaded = [(server_id, res.model) for server_id in res.model.copies] if res.model else []
        for server_id, model in loaded:
            if not (res.reference.kind == "controlnet" and model.row["hash_autov1"]):
                nodes_by_rel_name.setdefault((model.id, model.copies[server_id].rel_name), []).append(server_id)
        for (model_id, _), nodes in nodes_by_rel_name.items():
            local = normalise_name(res.local_name(nodes[0]).name)
            if local not in reg.aliases:
                unread.setdefault((alias_kind, local), []).extend((res, node) for node in nodes)
                continue
            several = shared(local)
            for server_id in nodes if several else ():
                others = several.get((alias_kind, server_id), set()) - {model_id}
                if any(reg.kinds_on[m].get(server_id, set()) & accepted for m in others):
                    res.clashes.add(server_id)
    by_kind: dict[str, list[str]] = {}
    for alias_kind, local in unread:
        by_kind.setdefault(alias_kind, []).append(local)
    for alias_kind, names in by_kind.items():
        for chunk in chunks(names):
            rows = db.conn.execute(
                f"""SELECT a.alias, a.server_id, a.model_id, f.role, COALESCE(f.content_type, m.type)
                    FROM model_aliases a
                    JOIN model_server_availability f ON f.model_id = a.model_id AND f.server_id = a.server_id
                    JOIN models m ON m.id = a.model_id
                    WHERE a.kind = ? AND a.alias IN ({placeholders(chunk)})""",
                [alias_kind, *chunk],
            ).fetchall()
            for alias, server_id, model_id, role, content in rows:
                for res, node in unread.get((alias_kind, alias), ()):
                    if (node == server_id and model_id != res.model_on(node).id
                            and kind_of(role, content) in KINDS[res.reference.kind]):
                        res.clashes.add(node)


def resolve(db: sqlite_utils.Database, requirements: list[Requirement], name_conflicts: str = "per-node") -> list[Resolution]:
    """Each requirement resolved against the registry (a handful of indexed reads for the whole job); a name alone
    that means different content on different nodes is resolved per node or, with "strict", ambiguous."""
    if name_conflicts not in NAME_CONFLICT_MODES:
        raise ValueError(f"name_conflicts must be one of {', '.join(NAME_CONFLICT_MODES)}")
    refs = [r.reference for r in requirements]
    names = sorted({normalise_name(r.name) for r in refs if r.name})
    hash_refs = [h for r in refs for h in r.hashes]
    hash_refs += [HashRef("any", normalise_name(r.name)) for r in refs if r.name_may_be_hash and r.name]
    reg = _Registry(_alias_rows(db, names), _hash_hits(db, hash_refs),
                    _version_hits(db, [r.civitai_version_id for r in refs if r.civitai_version_id is not None]), {}, {}, {})
    ids = {m for rows in reg.aliases.values() for _, m, _ in rows}
    ids |= {m for hits in reg.hashes.values() for m in hits} | {m for hits in reg.versions.values() for m in hits}
    reg.models = _models(db, sorted(ids))
    reg.copies = _copies(db, reg.models)
    for model_id, copies in reg.copies.items():
        kinds = reg.kinds_on[model_id] = {}
        for copy in copies:
            kinds.setdefault(copy.server_id, set()).add(copy.kind)
    resolutions = [_resolve_one(r, reg, name_conflicts == "per-node") for r in requirements]
    _mark_clashes(db, resolutions, reg)
    return resolutions


def mark_pending(db: sqlite_utils.Database, resolutions: list[Resolution], server_id: str | None = None) -> None:
    """For references no node holds (and, with server_id, those that node lacks): the nodes that list a file of
    that name not hashed yet. Reads the unhashed files only when some reference needs it."""
    wanted = [r for r in resolutions if r.reference.name and (not r.held or (server_id and not r.usable_on(server_id)))]
    if not wanted:
        return
    listed: dict[str, dict[str, set[str]]] = {}  # normalised name -> node -> kinds
    sql = "SELECT server_id, rel_name, role, content_type FROM model_server_availability WHERE model_id IS NULL"
    tails = {_name_tail(r.reference.name or "") for r in wanted}
    if all(tail.isascii() and tail for tail in tails):  # SQLite's LIKE folds ASCII case only (no ß -> ss)
        sql += " AND (" + " OR ".join(["rel_name LIKE ? ESCAPE '\\'"] * len(tails)) + ")"
        patterns = ["%" + re.sub(r"([%\\])", r"\\\1", tail) + "%" for tail in sorted(tails)]
    else:
        patterns = []
    for node, rel_name, role, content_type in db.conn.execute(sql, patterns):
        kind = kind_of(role, content_type)
        for _, alias in aliases(rel_name, kind):
            listed.setdefault(alias, {}).setdefault(node, set()).add(kind)
    for res in wanted:
        nodes = listed.get(normalise_name(res.reference.name or ""), {})
        res.pending_on = sorted(n for n, kinds in nodes.items() if kinds & KINDS[res.reference.kind])


def _name_tail(name: str) -> str:
    """What follows the last '/' or '_' of a name without its extension. Every file the name can denote (as its
    relative name, stem, file name or model_name) has this in its relative name: the stem is a suffix of the name
    that starts after a separator."""
    return re.split(r"[/\\_]", strip_extension(name.strip().replace("\\", "/")))[-1]


# --- embeddings the registry knows (cached per connection until the set may have changed) ----------------------
_embedding_cache: "weakref.WeakKeyDictionary[sqlite_utils.Database, tuple[int, EmbeddingNames]]" = weakref.WeakKeyDictionary()


def known_embeddings(db: sqlite_utils.Database) -> EmbeddingNames:
    """The stems of every embedding some node holds (what a prompt word is matched against). Rebuilt only when
    the triggers of catalog migration v6 counted a write that may change the set (not on heartbeats); the version
    is read before the rows, so a write in between only costs one more rebuild."""
    (version,) = db.conn.execute("SELECT version FROM registry_versions WHERE topic = 'embeddings'").fetchone()
    cached = _embedding_cache.get(db)
    if cached is not None and cached[0] == version:
        return cached[1]
    rows = db.conn.execute(
        """SELECT f.rel_name FROM model_server_availability f WHERE f.role = 'embedding' AND f.model_id IS NOT NULL
           UNION
           SELECT f.rel_name FROM model_server_availability f JOIN models m ON m.id = f.model_id
           WHERE (f.role IS NULL OR f.role = 'other') AND COALESCE(f.content_type, m.type) = 'embedding'"""
    ).fetchall()
    names = EmbeddingNames(stem(rel_name) for (rel_name,) in rows)
    _embedding_cache[db] = (version, names)
    return names


# --- the answers -------------------------------------------------------------------------------------------
def _reference(res: Resolution) -> dict[str, Any]:
    return {"kind": res.reference.kind, "reference": res.reference.describe(), "written": res.requirement.written}


def _short(model: ModelMatch) -> dict[str, Any]:
    """Enough to tell same-named models apart."""
    return {"id": model.id, "filename": model.row["filename"], "sha256": model.row["hash_sha256"],
            "autov2": model.row["hash_autov2"]}


def _loaded_by(res: Resolution, model: ModelMatch) -> list[str]:
    return [n for n in res.named_by.get(model.id, ()) if res.by_node.get(n) is model and n not in res.clashes]


def _candidate(res: Resolution, model: ModelMatch) -> dict[str, Any]:
    answer = model.summary() | {"nodes": sorted(model.copies)}
    if res.status == "name_conflict":
        answer["loaded_by"] = _loaded_by(res, model)
    return answer


def requirement_answer(res: Resolution, server_id: str | None = None) -> dict[str, Any]:
    model = res.model_on(server_id)
    answer = {
        **_reference(res),
        "fields": res.requirement.fields,
        "status": res.status,
        "match_type": res.match_type,
        "reason": res.reason,
        "model": model.summary() if model else None,
        "candidates": [_candidate(res, c) for c in res.candidates],
        "nodes": res.holders(),
        "pending_on": res.pending_on,
    }
    if res.clashes:
        answer["name_clash_on"] = sorted(res.clashes)
    if server_id is not None:
        usable = res.usable_on(server_id)
        answer["local_name"] = res.local_name(server_id).name if usable else None
        if usable and res.reference.kind == "checkpoint":
            answer["title"] = _title(model.copies[server_id], model.row)
    return answer


def _name_conflict_warnings(resolutions: list[Resolution], server_id: str | None = None) -> list[dict[str, Any]]:
    """For each name that means different content on different nodes: the content grouped with the nodes that
    name it so; for one node, what it loads and which other nodes hold other content under that name."""
    warnings = []
    for res in resolutions:
        if res.status != "name_conflict" or (server_id is not None and not res.usable_on(server_id)):
            continue
        warning = {"type": "name_conflict", **_reference(res)}
        if server_id is None:
            warning["reason"] = res.reason
            warning["models"] = [{**_short(c), "nodes": res.named_by[c.id], "loaded_by": _loaded_by(res, c)}
                                 for c in res.candidates]
        else:
            mine = res.by_node[server_id]
            others = [(c, res.named_by[c.id]) for c in res.candidates if c is not mine and res.named_by[c.id]]
            warning["reason"] = (f"{_label(res.reference)} is model {mine.id} [{mine.row['hash_autov2']}] on {server_id}; "
                                 + "; ".join(f"{', '.join(nodes)} hold(s) model {c.id} [{c.row['hash_autov2']}] under "
                                             f"that name" for c, nodes in others))
            warning["model"] = _short(mine)
            warning["others"] = [{**_short(c), "nodes": nodes} for c, nodes in others]
        warnings.append(warning)
    return warnings


def _has_all(resolutions: list[Resolution], server_id: str) -> bool:
    return all(r.usable_on(server_id) for r in resolutions)


def _renames(resolutions: list[Resolution], server_id: str) -> int:
    """How many names the job must change to run on this node."""
    return sum(1 for r in resolutions
               if normalise_name(r.local_name(server_id).name) != normalise_name(r.reference.name or ""))


def runnable_on(resolutions: list[Resolution], nodes: dict[str, NodeInfo], online: bool = True) -> list[NodeInfo]:
    """Nodes (online ones, or offline ones) that hold every model, best first: fewest renamed models, then most
    recently heard from."""
    found = [n for n in nodes.values() if n.online == online and _has_all(resolutions, n.server_id)]
    found.sort(key=lambda n: n.server_id)
    found.sort(key=lambda n: n.last_contact or "", reverse=True)
    found.sort(key=lambda n: _renames(resolutions, n.server_id))
    return found


class Ranking(Protocol):
    """How the nodes that can run a job are ordered beyond today's order (the central server's, from what each node
    reports: server/insight/ranking.py); each node with the words that placed it (`reasons`)."""

    def order(self, resolutions: list[Resolution], nodes: list[NodeInfo]) -> list[tuple[NodeInfo, list[str]]]: ...

    def better_nodes(self, resolutions: list[Resolution], nodes: dict[str, NodeInfo],
                     server_id: str) -> list[tuple[NodeInfo, list[str]]]: ...


class TodaysOrder:
    """No ranking beyond `runnable_on`'s order, no hint."""

    def order(self, resolutions: list[Resolution], nodes: list[NodeInfo]) -> list[tuple[NodeInfo, list[str]]]:
        return [(n, []) for n in nodes]

    def better_nodes(self, resolutions: list[Resolution], nodes: dict[str, NodeInfo],
                     server_id: str) -> list[tuple[NodeInfo, list[str]]]:
        return []


def ranked(order: list[tuple[NodeInfo, list[str]]]) -> list[dict[str, Any]]:
    """The nodes as the answers list them: each with its place (1 = best) and the reasons."""
    return [{**node.as_dict(), "rank": i, "reasons": reasons} for i, (node, reasons) in enumerate(order, 1)]


def _list(labels: list[str]) -> str:
    return "; ".join(labels)


def availability(resolutions: list[Resolution], nodes: dict[str, NodeInfo], ranking: Ranking = TodaysOrder()) -> dict[str, Any]:
    """The pre-submission answer (`model_availability`); `candidates` best first, by `ranking`."""
    servers = []
    per_node = [r for r in resolutions if r.status == "name_conflict"]
    for node in nodes.values():
        missing = [{**_reference(r), "why": r.why_missing_on(node.server_id)}
                   for r in resolutions if not r.usable_on(node.server_id)]
        loads = [{**_reference(r), "model": _short(r.by_node[node.server_id])} for r in per_node if r.usable_on(node.server_id)]
        servers.append({**node.as_dict(), "has_all": not missing, "missing": missing, "loads": loads})
    candidates = runnable_on(resolutions, nodes)
    unresolved = [r for r in resolutions if r.status not in ("resolved", "name_conflict")]
    unheld = [r for r in resolutions if r.status == "resolved" and not r.held]
    if unresolved:
        reason = _list([r.reason for r in unresolved])
    elif unheld:
        reason = _list([f"no node has {_label(r.reference)} (model {r.model.id})" for r in unheld])
    elif candidates:
        what = "every model the job names" if resolutions else "what it needs (the job names no model)"
        reason = f"{len(candidates)} online node(s) have {what}"
    elif offline := runnable_on(resolutions, nodes, online=False):
        reason = f"only offline nodes have every model: {', '.join(n.server_id for n in offline)}"
    elif not any(n.online for n in nodes.values()):
        reason = "no node is online"
    elif offline_only := [r for r in resolutions if not any(nodes[s].online for s in r.holders() if s in nodes)]:
        reason = _list([f"{_label(r.reference)} is only on offline nodes: {', '.join(r.holders())}" for r in offline_only])
    else:
        reason = "no single online node has every model: " + _list(
            [f"{_label(r.reference)} is on {', '.join(r.holders())}" for r in resolutions])
    return {
        "available": not unresolved and not unheld and bool(candidates),
        "reason": reason,
        "requirements": [requirement_answer(r) for r in resolutions],
        "servers": servers,
        "candidates": ranked(ranking.order(resolutions, candidates)),
        "warnings": _name_conflict_warnings(resolutions),
    }


def dispatch(parsed: ParsedJob, resolutions: list[Resolution], nodes: dict[str, NodeInfo], server_id: str,
             ranking: Ranking = TodaysOrder()) -> dict[str, Any]:
    """The pre-dispatch answer for one node: ok with the payload in that node's names (and the nodes `ranking` finds
    better placed, a hint), or what the queue should do (`nodes` best first)."""
    node = nodes.get(server_id)
    if node is None:
        raise UnknownNode(server_id)
    missing = [r for r in resolutions if not r.usable_on(server_id)]
    answer: dict[str, Any] = {
        "server_id": server_id,
        "online": node.online,
        "ok": False,
        "action": None,
        "reason": "",
        "missing": [{**_reference(r), "why": r.why_missing_on(server_id)} for r in missing],
        "requirements": [requirement_answer(r, server_id) for r in resolutions],
        "payload": None,
        "override_settings": {},
        "nodes": [],
        "better_nodes": [],
        "warnings": _name_conflict_warnings(resolutions, server_id),
    }
    if not missing and node.online:
        rewritten = rewrite(parsed, {r.reference.key: r.local_name(server_id) for r in resolutions})
        reason = f"{server_id} has every model the job names" if resolutions else "the job names no model"
        answer.update(ok=True, reason=reason, payload=rewritten.payload, override_settings=rewritten.override_settings,
                      better_nodes=ranked(ranking.better_nodes(resolutions, nodes, server_id)))
        return answer
    others = [n for n in runnable_on(resolutions, nodes) if n.server_id != server_id]
    action, reason, alternatives = _decide(resolutions, nodes, node, missing, others)
    answer.update(action=action, reason=reason, nodes=ranked(ranking.order(resolutions, alternatives)))
    return answer


def _decide(resolutions: list[Resolution], nodes: dict[str, NodeInfo], node: NodeInfo, missing: list[Resolution],
            others: list[NodeInfo]) -> tuple[str, str, list[NodeInfo]]:
    unusable = [r for r in resolutions if r.status in ("ambiguous", "conflict")]
    if unusable:
        return "fail", _list([r.reason for r in unusable]), []
    nowhere = [r for r in resolutions if r.status == "unknown" or (r.status == "resolved" and not r.held)]
    if nowhere:
        if all(r.pending_on for r in nowhere):
            return "retry_later", _list([f"{_label(r.reference)} is on its way: {', '.join(r.pending_on)} list(s) a file of "
                                         f"that name not hashed yet" for r in nowhere]), others
        return "fail", _list([r.reason if r.status == "unknown" else f"no node has {_label(r.reference)}"
                              for r in nowhere if not r.pending_on]), []
    if not missing:
        return "retry_later", f"{node.server_id} is offline (last heard from {node.last_contact or 'never'})", others
    if all(node.server_id in r.pending_on for r in missing):
        return "retry_later", _list([f"{_label(r.reference)} is on its way: {node.server_id} lists a file of that name not "
                                     f"hashed yet" for r in missing]), others
    lacking = ", ".join(_label(r.reference) for r in missing)
    if others:
        return "route_elsewhere", f"{node.server_id} lacks {lacking}; {len(others)} online node(s) have every model", others
    offline = runnable_on(resolutions, nodes, online=False)
    if offline:
        return "retry_later", f"{node.server_id} lacks {lacking}; only offline nodes have every model", offline
    return "fail", f"{node.server_id} lacks {lacking}; no single node has every model", []


def verify(db: sqlite_utils.Database, nodes: dict[str, NodeInfo], reference: ModelReference, provided: Any,
           interpreted_as: str) -> dict[str, Any]:
    """One model by Civitai version id or hash (the seed's checkpoint-verify answer, with the nodes that hold it)."""
    (res,) = resolve(db, [Requirement(reference, str(provided), [interpreted_as])])
    online = [s for s in res.holders() if s in nodes and nodes[s].online]
    available = res.status == "resolved" and bool(online)
    if res.status != "resolved":
        reason = res.reason
    elif online:
        reason = f"model {res.model.id} is on {len(online)} online node(s)"
    elif res.holders():
        reason = f"model {res.model.id} is only on offline nodes: {', '.join(res.holders())}"
    else:
        reason = f"model {res.model.id} is known to the registry, but no node holds it"
    model = res.model.row if res.model else None
    return {
        "success": True,
        "provided_value": provided,
        "interpreted_as": interpreted_as,
        "available": available,
        "reason": reason,
        "status": res.status,
        "hash": model["hash_sha256"] if model else (reference.hashes[0].value if reference.hashes else None),
        "match_type": res.match_type,
        "civitai_model_id": model["civitai_id"] if model else None,
        "model_info": None if model is None else {
            "id": model["id"], "name": model["name"], "filename": model["filename"], "type": model["type"],
            "base": model["base"], "hash_autov2": model["hash_autov2"], "hash_sha256": model["hash_sha256"],
            "civitai_id": model["civitai_id"], "civitai_version_id": model["civitai_version_id"],
            "civitai_model_name": model["civitai_model_name"],
        },
        "servers": [{**nodes[s].as_dict(), "local_name": res.local_name(s).name} for s in res.holders() if s in nodes],
        "candidates": [c.summary() for c in res.candidates],
    }


# --- what happens after an answer: last_used, the wanted counter ---------------------------------------------
def record_last_used(db: sqlite_utils.Database, resolutions: list[Resolution], now: str | None = None,
                     server_id: str | None = None) -> int:
    """An approved dispatch (to server_id) marks its models used (at most once a minute per model); returns how
    many were written. A name that means different content per node marks what that node loads."""
    now = now or utc_now()
    since = (datetime.strptime(now, TIME_FORMAT) - timedelta(seconds=LAST_USED_GRANULARITY_SECONDS)).strftime(TIME_FORMAT)
    models = [r.model_on(server_id) for r in resolutions]
    ids = sorted({m.id for m in models if m is not None and (m.row["last_used"] or "") <= since})
    if ids:
        with write_transaction(db):
            db.conn.execute(f"UPDATE models SET last_used = ? WHERE id IN ({placeholders(ids)})", [now, *ids])
    return len(ids)


def reference_key(reference: ModelReference) -> str:
    """The wanted counter's key for a reference the registry cannot place: its strongest identifier."""
    if reference.hashes:
        best = max(reference.hashes, key=lambda h: (len(h.value), h.kind != "any"))
        return f"{best.kind}:{best.value}"
    if reference.civitai_version_id is not None:
        return f"civitai_version_id:{reference.civitai_version_id}"
    return f"name:{normalise_name(reference.name or '')}"


def _reference_from_key(kind: str, key: str) -> ModelReference:
    prefix, _, value = key.partition(":")
    if prefix == "name":
        return ModelReference(kind, name=value)
    if prefix == "civitai_version_id":
        return ModelReference(kind, civitai_version_id=int(value))
    return ModelReference(kind, hashes=(HashRef(prefix, value),))


def wanted_key(res: Resolution) -> str:
    """What a reference counts for: the model when the registry knows the one it means, else the reference."""
    if res.status == "resolved" and res.model is not None:
        return f"sha256:{res.model.row['hash_sha256']}"
    return reference_key(res.reference)


def unmet_references(resolutions: list[Resolution]) -> list[tuple[Resolution, str]]:
    """Each reference no node has (unknown, or a known model no node holds) and not on its way, with its key."""
    return [(res, wanted_key(res)) for res in resolutions
            if not res.pending_on and (res.status == "unknown" or (res.status == "resolved" and not res.held))]


def record_wanted(db: sqlite_utils.Database, resolutions: list[Resolution], now: str | None = None) -> int:
    """Count each unmet reference (`unmet_references`) in the most-wanted list."""
    now = now or utc_now()
    rows = [(res.reference.kind, key, res.requirement.written, res.model.id if res.model else None)
            for res, key in unmet_references(resolutions)]
    if rows:
        with write_transaction(db):
            db.conn.executemany(
                """INSERT INTO wanted_models (kind, reference_key, reference, model_id, requests, first_wanted, last_wanted)
                   VALUES (?, ?, ?, ?, 1, ?, ?)
                   ON CONFLICT (kind, reference_key) DO UPDATE SET requests = requests + 1, reference = excluded.reference,
                       model_id = COALESCE(excluded.model_id, model_id), last_wanted = excluded.last_wanted""",
                [(*row, now, now) for row in rows],
            )
    return len(rows)


def list_wanted(db: sqlite_utils.Database, *, limit: int = 50, offset: int = 0, kind: str | None = None,
                missing_only: bool = True, name_conflicts: str = "per-node") -> dict[str, Any]:
    """The most-wanted models, most requested first, each re-resolved now: `available_now` when a node holds it
    today; with missing_only (the default) those are left out."""
    where, params = ("WHERE kind = ?", [kind]) if kind else ("", [])
    cursor = db.conn.execute(
        f"""SELECT kind, reference_key, reference, model_id, requests, first_wanted, last_wanted FROM wanted_models
            {where} ORDER BY requests DESC, last_wanted DESC, id""", params)
    names = [d[0] for d in cursor.description]
    listed: list[dict[str, Any]] = []
    while len(listed) <= offset + limit:  # one past the page tells whether there is a next one
        rows = [dict(zip(names, values)) for values in cursor.fetchmany(200)]
        if not rows:
            break
        resolutions = resolve(db, [Requirement(_reference_from_key(r["kind"], r["reference_key"]), r["reference"], [])
                                   for r in rows], name_conflicts)
        listed += [{**row, "available_now": res.held, "nodes_now": res.holders(),
                    "model": res.model.summary() if res.model else None}
                   for row, res in zip(rows, resolutions) if not (missing_only and res.held)]
    page = listed[offset : offset + limit]
    more = len(listed) > offset + limit
    return {"wanted": page, "limit": limit, "offset": offset, "next_offset": offset + limit if more else None}
