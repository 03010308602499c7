"""The job checks' ranking of the nodes that can run a job (issue #13), from what each online node last reported.

A model switch costs a Forge node 10-30 s, so a node with the job's checkpoint already loaded goes first, and an
idle node before a busy one. The nodes come in today's order (fewest names to rewrite, then most recently heard
from: shared/jobs/resolver.py `runnable_on`), which stays the tie-break. RULES is the table, most important first:
a rule that holds puts a node ahead (`ahead`) or behind (a penalty) of those it does not hold for, and its words
are the node's `reasons`. Adding a rule is one entry. An offline node's last state is never looked at.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from modelsync.shared.jobs.resolver import NodeInfo, Resolution, runnable_on
from modelsync.shared.names import normalise_name

from .node_state import NodeState

_TITLE = re.compile(r"^(?P<name>.*?)(?: \[(?P<short>[0-9a-fA-F]{8,64})\])?$")


@dataclass(frozen=True)
class Candidate:
    node: NodeInfo
    state: NodeState | None  # None: offline (its last state is not used), or it never reported one
    checkpoint_loaded: bool  # every checkpoint the job names is the one resident on the node (False: none named)


@dataclass(frozen=True)
class Rule:
    reason: str
    holds: Callable[[Candidate], bool]
    ahead: bool = True  # False: a penalty, the node goes behind those it does not hold for


RULES: tuple[Rule, ...] = (
    Rule("checkpoint loaded", lambda c: c.checkpoint_loaded),
    Rule("idle", lambda c: c.state is not None and c.state.busy is False),
    Rule("busy", lambda c: c.state is not None and c.state.busy is True, ahead=False),
)
BEST = ("checkpoint loaded", "idle")  # a node with both is worth a `better_nodes` hint


def loaded_is(res: Resolution, server_id: str, state: NodeState) -> bool:
    """Whether the checkpoint the reference loads on that node is the one resident there: by SHA256 when the node
    reported one, else by its title (the relative name, and the short hash when the title has one)."""
    model = res.model_on(server_id)
    if model is None or server_id not in model.copies or not state.loaded_title:
        return False
    if state.loaded_sha256:
        return state.loaded_sha256 == model.row["hash_sha256"]
    title = _TITLE.match(state.loaded_title)
    assert title is not None
    short, autov2 = title["short"], model.row["hash_autov2"] or ""
    if short and not (model.row["hash_sha256"] or "").startswith(short.lower()) and short.lower() != autov2.lower():
        return False
    return normalise_name(title["name"]) == normalise_name(model.copies[server_id].rel_name)


class StateRanking:
    """The resolver's ranking hook (shared/jobs/resolver.py `Ranking`) over the nodes' states."""

    def __init__(self, states: dict[str, NodeState]):
        self._states = states

    def candidate(self, resolutions: list[Resolution], node: NodeInfo) -> Candidate:
        state = self._states.get(node.server_id) if node.online else None
        checkpoints = [r for r in resolutions if r.reference.kind == "checkpoint"]
        loaded = state is not None and bool(checkpoints) and all(loaded_is(r, node.server_id, state) for r in checkpoints)
        return Candidate(node, state, loaded)

    @staticmethod
    def _key(candidate: Candidate) -> tuple[bool, ...]:
        return tuple(rule.holds(candidate) != rule.ahead for rule in RULES)

    @staticmethod
    def reasons(candidate: Candidate) -> list[str]:
        return [rule.reason for rule in RULES if rule.holds(candidate)]

    def order(self, resolutions: list[Resolution], nodes: list[NodeInfo]) -> list[tuple[NodeInfo, list[str]]]:
        """`nodes` (in today's order) by the rules; the sort is stable, so today's order breaks ties."""
        candidates = sorted((self.candidate(resolutions, n) for n in nodes), key=self._key)
        return [(c.node, self.reasons(c)) for c in candidates]

    def better_nodes(self, resolutions: list[Resolution], nodes: dict[str, NodeInfo],
                     server_id: str) -> list[tuple[NodeInfo, list[str]]]:
        """Other online nodes that can run the job with its checkpoint loaded and idle, when `server_id` is not both.
        Only the nodes whose state says so are looked at (a few), so an ok dispatch-check stays cheap."""
        target = self.candidate(resolutions, nodes[server_id])
        if set(BEST) <= set(self.reasons(target)):
            return []
        best = {}
        for sid, state in self._states.items():
            node = nodes.get(sid)
            if sid != server_id and node is not None and node.online and state.busy is False and state.loaded_title:
                candidate = self.candidate(resolutions, node)
                if candidate.checkpoint_loaded:
                    best[sid] = node
        return self.order(resolutions, runnable_on(resolutions, best)) if best else []

