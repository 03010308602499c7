"""Resolving job references against a registry filled from real scans (applied as the server's sync applies them)."""
from datetime import datetime, timedelta, timezone

import model_factory
import pytest
from support_jobs import JobNode, addnet_of, autov1_of, register_node, registry, sha256_of

from modelsync.shared.jobs.requirements import HashRef, ModelReference, Requirement, extract
from modelsync.shared.jobs.resolver import (
    availability,
    dispatch,
    known_embeddings,
    list_wanted,
    load_nodes,
    mark_pending,
    record_last_used,
    record_wanted,
    resolve,
    utc_now,
)


class Fleet:
    """Two nodes: one Linux node with sub-folders, one Windows node holding some of the same files under other names."""

    def __init__(self, tmp_path):
        self.db = registry(tmp_path / "registry.db")
        self.tmp = tmp_path
        self.linux = JobNode(tmp_path, "gpu-linux")
        self.windows = JobNode(tmp_path, "gpu-win", windows=True)
        self.base = self.linux.add("Stable-diffusion", "sdxl/base.safetensors", model_factory.write_checkpoint, base="sdxl")
        self.v15 = self.linux.add("Stable-diffusion", "sd15/v15.safetensors", model_factory.write_checkpoint, base="sd1")
        self.hero = self.linux.add("Lora", "chars/hero.safetensors", metadata={"ss_output_name": "hero_v1"})
        self.ink = self.linux.add("Lora", "styles/ink.safetensors")
        self.vae = self.linux.add("VAE", "sdxl_vae.safetensors", model_factory.write_vae)
        self.embedding = self.linux.add("embeddings", "easynegative.safetensors", model_factory.write_embedding)
        self.windows.copy(self.base, "Stable-diffusion", "XL/base.safetensors")
        self.windows.copy(self.hero, "Lora", "sub/hero_renamed.safetensors")
        self.windows.copy(self.vae, "VAE", "sdxl_vae.safetensors")
        self.sync(self.linux, self.windows)

    def sync(self, *nodes: JobNode, calculate_hashes: bool = True) -> None:
        for node in nodes:
            node.apply_to(self.db, calculate_hashes)
            register_node(self.db, node.server_id, utc_now())

    def model_id(self, path) -> int:
        return self.db.execute("SELECT id FROM models WHERE hash_sha256 = ?", [sha256_of(path)]).fetchone()[0]

    def one(self, reference: ModelReference, name_conflicts: str = "per-node"):
        (res,) = resolve(self.db, [Requirement(reference, reference.describe(), ["test"])], name_conflicts)
        return res

    def job(self, job, fmt="auto", name_conflicts: str = "per-node"):
        parsed = extract(job, fmt, known_embeddings(self.db))
        return parsed, resolve(self.db, parsed.requirements, name_conflicts)

    def nodes(self, offline=()):
        return load_nodes(self.db, lambda server_id, sync, beat: server_id not in offline)


@pytest.fixture
def fleet(tmp_path):
    return Fleet(tmp_path)


def test_checkpoint_names_resolve_the_way_a1111_resolves_them(fleet):
    sha = sha256_of(fleet.base)
    wanted = fleet.model_id(fleet.base)
    for name in (f"sdxl/base.safetensors [{sha[:10]}]", "sdxl\\base.safetensors", "SDXL/Base.safetensors", "sdxl_base",
                 "base", f"base [{sha[:10]}]", sha[:10].upper(), sha.upper(), "XL\\base.safetensors", "xl_base"):
        (res,) = fleet.job({"override_settings": {"sd_model_checkpoint": name}})[1]
        assert (res.status, res.model.id) == ("resolved", wanted), name
        assert sorted(res.model.copies) == ["gpu-linux", "gpu-win"]
    (res,) = fleet.job({"override_settings": {"sd_model_checkpoint": sha[:10]}})[1]
    assert res.match_type == "autov2"
    assert res.local_name("gpu-linux").name == "sdxl/base.safetensors"
    assert res.local_name("gpu-win").name == "XL\\base.safetensors"  # what A1111 on Windows registers (os separators)


def test_loras_by_stem_alias_and_both_short_hashes(fleet):
    wanted = fleet.model_id(fleet.hero)
    sha, addnet = sha256_of(fleet.hero), addnet_of(fleet.hero)
    for reference, match_type in (
        (ModelReference("lora", name="hero"), "stem"),
        (ModelReference("lora", name="HERO_V1"), "output_name"),
        (ModelReference("lora", name="chars\\hero"), "rel_stem"),
        (ModelReference("lora", name="hero_renamed"), "stem"),
        (ModelReference("lora", hashes=(HashRef("any", addnet[:12]),)), "autov3"),  # A1111's "Lora hashes"
        (ModelReference("lora", hashes=(HashRef("any", sha[:12]),)), "sha256_12"),  # Forge's
        (ModelReference("lora", hashes=(HashRef("autov3", addnet),)), "autov3"),
        (ModelReference("lora", hashes=(HashRef("sha256", sha),)), "sha256"),
    ):
        res = fleet.one(reference)
        assert (res.status, res.model.id, res.match_type) == ("resolved", wanted, match_type), reference
    res = fleet.one(ModelReference("lora", name="hero_v1"))
    assert (res.local_name("gpu-linux").name, res.local_name("gpu-win").name) == ("hero", "hero_renamed")


def test_a_name_only_resolves_to_its_kind(fleet):
    res = fleet.one(ModelReference("lora", name="base"))
    assert res.status == "unknown" and "checkpoint" in res.reason
    res = fleet.one(ModelReference("checkpoint", hashes=(HashRef("sha256", sha256_of(fleet.hero)),)))
    assert res.status == "unknown" and "not a checkpoint" in res.reason


def test_same_name_different_content_is_ambiguous_when_strict_unless_a_hash_decides(fleet):
    other = JobNode(fleet.tmp, "gpu-other")
    other_ink = other.add("Lora", "ink.safetensors")
    fleet.sync(other)
    res = fleet.one(ModelReference("lora", name="ink"), "strict")
    assert res.status == "ambiguous" and res.model is None
    assert {c.id for c in res.candidates} == {fleet.model_id(fleet.ink), fleet.model_id(other_ink)}
    assert {n for c in res.candidates for n in c.copies} == {"gpu-linux", "gpu-other"}

    # an infotext's Lora hashes decide (A1111 looks the hash up first)
    infotext = (f"a cat <lora:ink:0.6>\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, "
                f'Lora hashes: "ink: {addnet_of(other_ink)[:12]}", Version: v1.10.1')
    (res,) = fleet.job(infotext, name_conflicts="strict")[1]
    assert (res.status, res.model.id, list(res.model.copies)) == ("resolved", fleet.model_id(other_ink), ["gpu-other"])
    # an unknown hash (a Forge 2.0 build wrote bogus ones) falls back to the name, which here is ambiguous
    (res,) = fleet.job(infotext.replace(addnet_of(other_ink)[:12], "0123456789ab"), name_conflicts="strict")[1]
    assert res.status == "ambiguous"
    res = fleet.one(ModelReference("lora", name="ink", hashes=(HashRef("sha256", sha256_of(fleet.ink)),)))
    assert (res.status, res.model.id) == ("resolved", fleet.model_id(fleet.ink))


def test_same_name_different_content_resolves_per_node(fleet):
    other = JobNode(fleet.tmp, "gpu-other")
    other_ink = other.add("Lora", "ink.safetensors")
    both = JobNode(fleet.tmp, "gpu-both")
    both.copy(fleet.ink, "Lora", "ink.safetensors")
    both.copy(other_ink, "Lora", "more/ink.safetensors")
    fleet.sync(other, both)
    ink, theirs = fleet.model_id(fleet.ink), fleet.model_id(other_ink)
    parsed, (res,) = fleet.job({"prompt": "<lora:ink:0.5>"})
    assert (res.status, res.model) == ("name_conflict", None)  # no one content: never a reason to copy or fetch
    assert {node: m.id for node, m in res.by_node.items()} == {"gpu-linux": ink, "gpu-other": theirs}
    assert res.named_by == {ink: ["gpu-both", "gpu-linux"], theirs: ["gpu-both", "gpu-other"]}
    assert res.holders() == ["gpu-linux", "gpu-other"] and res.held
    assert (res.usable_on("gpu-both"), res.why_missing_on("gpu-both"), res.why_missing_on("gpu-win")) == (
        False, "ambiguous", "not_on_node")
    assert res.local_name("gpu-other").name == "ink" and res.model_on("gpu-other").id == theirs

    nodes = fleet.nodes()
    on_other = dispatch(parsed, [res], nodes, "gpu-other")
    assert on_other["ok"] is True and on_other["payload"] == {"prompt": "<lora:ink:0.5>"}
    assert [(w["type"], w["model"]["id"], [(o["id"], o["nodes"]) for o in w["others"]]) for w in on_other["warnings"]] == [
        ("name_conflict", theirs, [(ink, ["gpu-both", "gpu-linux"])])]
    assert on_other["requirements"][0]["model"]["id"] == theirs
    on_both = dispatch(parsed, [res], nodes, "gpu-both")
    assert (on_both["ok"], on_both["action"], on_both["warnings"]) == (False, "route_elsewhere", [])
    answer = availability([res], nodes)
    assert answer["available"] is True and len(answer["warnings"]) == 1
    assert {s["server_id"]: [x["model"]["id"] for x in s["loads"]] for s in answer["servers"]} == {
        "gpu-linux": [ink], "gpu-other": [theirs], "gpu-both": [], "gpu-win": []}

    # an approved dispatch marks what that node loads as used
    assert record_last_used(fleet.db, [res], server_id="gpu-other") == 1
    used = dict(fleet.db.execute("SELECT id, last_used FROM models WHERE id IN (?, ?)", [ink, theirs]).fetchall())
    assert used[ink] is None and used[theirs] is not None
    # the unknown hash of an infotext falls back to the name: per node too; a hash that is known decides
    infotext = (f"a cat <lora:ink:0.6>\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, "
                f'Lora hashes: "ink: 0123456789ab", Version: v1.10.1')
    assert [r.status for r in fleet.job(infotext)[1]] == ["name_conflict"]
    assert [r.status for r in fleet.job(infotext.replace("0123456789ab", addnet_of(other_ink)[:12]))[1]] == ["resolved"]
    # a name only one content has (its relative stem) resolves for the whole fleet
    assert fleet.one(ModelReference("lora", name="more/ink")).status == "resolved"
    with pytest.raises(ValueError):
        resolve(fleet.db, parsed.requirements, "lenient")


def test_a_title_whose_hash_disagrees_with_its_name_is_a_conflict(fleet):
    v15 = sha256_of(fleet.v15)
    (res,) = fleet.job({"override_settings": {"sd_model_checkpoint": f"sdxl/base.safetensors [{v15[:10]}]"}})[1]
    assert res.status == "conflict" and {c.id for c in res.candidates} == {fleet.model_id(fleet.base), fleet.model_id(fleet.v15)}
    (res,) = fleet.job({"override_settings": {"sd_model_checkpoint": "sdxl/base.safetensors [0000000000]"}})[1]
    assert res.status == "conflict"
    # the name is unknown but the hash is not: the content is meant
    (res,) = fleet.job({"override_settings": {"sd_model_checkpoint": f"gone/old_name.safetensors [{v15[:10]}]"}})[1]
    assert (res.status, res.model.id) == ("resolved", fleet.model_id(fleet.v15))
    # an infotext's Model hash that no node knows: the Model name decides
    infotext = "a cat\nSteps: 20, Sampler: Euler a, Seed: 1, Model hash: 0000000000, Model: v15, Version: v1.10.1"
    (res,) = fleet.job(infotext)[1]
    assert (res.status, res.model.id) == ("resolved", fleet.model_id(fleet.v15))


def test_vae_controlnet_and_forge_modules(fleet):
    control = fleet.linux.add("ControlNet", "control_v11p_sd15_canny.safetensors", model_factory.write_padded,
                              size_bytes=3 * 1024 * 1024)
    fleet.windows.copy(control, "ControlNet", "cn/control_v11p_sd15_canny.safetensors")
    fleet.sync(fleet.linux, fleet.windows)
    autov1 = autov1_of(control)
    body = {"override_settings": {"sd_vae": "SDXL_VAE.safetensors",
                                  "forge_additional_modules": ["/opt/forge/models/VAE/sdxl_vae.safetensors"]},
            "alwayson_scripts": {"controlnet": {"args": [{"model": f"control_v11p_sd15_canny [{autov1}]"}]}}}
    parsed, resolutions = fleet.job(body)
    by_kind = {r.reference.kind: r for r in resolutions}
    assert {k: r.status for k, r in by_kind.items()} == {"vae": "resolved", "module": "resolved", "controlnet": "resolved"}
    assert by_kind["vae"].model.id == by_kind["module"].model.id == fleet.model_id(fleet.vae)
    assert by_kind["controlnet"].model.id == fleet.model_id(control)
    nodes = fleet.nodes()
    answer = dispatch(parsed, resolutions, nodes, "gpu-win")
    assert answer["ok"] is True
    assert answer["payload"]["override_settings"] == {
        "sd_vae": "sdxl_vae.safetensors", "forge_additional_modules": ["C:\\sd\\models\\VAE\\sdxl_vae.safetensors"]}
    assert answer["payload"]["alwayson_scripts"]["controlnet"]["args"][0]["model"] == f"control_v11p_sd15_canny [{autov1}]"
    (res,) = fleet.job({"alwayson_scripts": {"controlnet": {"args": [{"model": f"control_v11p_sd15_canny [{'0' * 8}]"}]}}})[1]
    assert res.status == "conflict"


def test_a_node_whose_name_for_the_model_names_another_one_too_cannot_be_told_to_load_it(fleet):
    clash = JobNode(fleet.tmp, "gpu-clash")
    clash.copy(fleet.ink, "Lora", "a/style.safetensors")
    clash.add("Lora", "b/style.safetensors")
    fleet.sync(clash)
    res = fleet.one(ModelReference("lora", hashes=(HashRef("sha256", sha256_of(fleet.ink)),)))
    assert res.status == "resolved" and set(res.model.copies) == {"gpu-linux", "gpu-clash"}
    assert res.clashes == {"gpu-clash"} and res.holders() == ["gpu-linux"] and not res.usable_on("gpu-clash")
    assert fleet.one(ModelReference("lora", name="style")).status == "ambiguous"


def test_a_file_listed_but_not_hashed_yet_is_on_its_way(fleet):
    fleet.linux.add("Lora", "fresh.safetensors")
    fleet.sync(fleet.linux, calculate_hashes=False)
    parsed, resolutions = fleet.job({"prompt": "<lora:fresh:1> <lora:ink:1>"})
    mark_pending(fleet.db, resolutions, "gpu-win")
    fresh, ink = resolutions
    assert (fresh.status, fresh.pending_on) == ("unknown", ["gpu-linux"])
    assert ink.status == "resolved" and ink.pending_on == []
    answer = dispatch(parsed, resolutions, fleet.nodes(), "gpu-linux")
    assert (answer["ok"], answer["action"]) == (False, "retry_later") and "on its way" in answer["reason"]
    assert record_wanted(fleet.db, resolutions) == 0  # on its way: not counted as wanted


def test_files_on_their_way_are_found_by_every_name_a1111_gives_them(fleet):
    fleet.windows.add("Lora", "sub/My_Style.v2.safetensors")
    fleet.windows.add("Stable-diffusion", "xl/Fresh_Base.safetensors", model_factory.write_checkpoint, base="sdxl")
    fleet.sync(fleet.windows, calculate_hashes=False)
    job = {"prompt": "<lora:my_style.v2:1> <lora:SUB/MY_STYLE.V2:1>",
           "override_settings": {"sd_model_checkpoint": "xl_Fresh_Base"}}  # stem; relative stem; A1111's model_name
    _, resolutions = fleet.job(job)
    mark_pending(fleet.db, resolutions, "gpu-linux")
    assert [(r.status, r.pending_on) for r in resolutions] == [("unknown", ["gpu-win"])] * 3


def test_availability_and_dispatch_answers(fleet):
    job = {"prompt": "<lora:hero_v1:0.8> <lora:ink:0.4> easynegative",
           "override_settings": {"sd_model_checkpoint": "sdxl/base.safetensors"}}
    parsed, resolutions = fleet.job(job)
    assert [r.reference.kind for r in resolutions] == ["checkpoint", "lora", "lora", "embedding"]
    nodes = fleet.nodes()
    answer = availability(resolutions, nodes)
    assert answer["available"] is True and [c["server_id"] for c in answer["candidates"]] == ["gpu-linux"]
    win = next(s for s in answer["servers"] if s["server_id"] == "gpu-win")
    assert not win["has_all"] and {m["reference"] for m in win["missing"]} == {"ink", "easynegative"}
    routed = dispatch(parsed, resolutions, nodes, "gpu-win")
    assert (routed["ok"], routed["action"], [n["server_id"] for n in routed["nodes"]]) == (False, "route_elsewhere", ["gpu-linux"])
    assert routed["payload"] is None

    offline = fleet.nodes(offline={"gpu-linux"})
    answer = availability(resolutions, offline)
    assert answer["available"] is False and "only offline nodes" in answer["reason"]
    assert dispatch(parsed, resolutions, offline, "gpu-linux")["action"] == "retry_later"
    assert dispatch(parsed, resolutions, offline, "gpu-win")["action"] == "retry_later"

    only_shared = {"prompt": "<lora:hero:1>", "override_settings": {"sd_model_checkpoint": "base"}}
    parsed, resolutions = fleet.job(only_shared)
    answer = availability(resolutions, nodes)
    assert {c["server_id"] for c in answer["candidates"]} == {"gpu-linux", "gpu-win"}
    assert answer["candidates"][0]["server_id"] == "gpu-linux"  # no renaming needed there
    ok = dispatch(parsed, resolutions, nodes, "gpu-win")
    assert ok["ok"] is True and ok["payload"] == {"prompt": "<lora:hero_renamed:1>",
                                                  "override_settings": {"sd_model_checkpoint": "XL\\base.safetensors"}}


def test_wanted_counts_what_no_node_has_and_lists_it_until_a_node_has_it(fleet):
    missing_sha = "ab" * 32
    refs = [ModelReference("lora", hashes=(HashRef("sha256", missing_sha),)), ModelReference("lora", name="nowhere"),
            ModelReference("lora", name="hero")]
    requirements = [Requirement(r, r.describe(), ["test"]) for r in refs]
    for _ in range(3):
        resolutions = resolve(fleet.db, requirements[:1])
        record_wanted(fleet.db, resolutions, utc_now())
    assert record_wanted(fleet.db, resolve(fleet.db, requirements)) == 2  # hero is held: not wanted
    listed = list_wanted(fleet.db)
    assert [(w["reference_key"], w["requests"]) for w in listed["wanted"]] == [(f"sha256:{missing_sha}", 4), ("name:nowhere", 1)]
    assert listed["next_offset"] is None
    assert list_wanted(fleet.db, limit=1)["next_offset"] == 1
    assert [w["reference_key"] for w in list_wanted(fleet.db, limit=1, offset=1)["wanted"]] == ["name:nowhere"]

    fleet.linux.add("Lora", "nowhere.safetensors")
    fleet.sync(fleet.linux)
    assert [w["reference_key"] for w in list_wanted(fleet.db)["wanted"]] == [f"sha256:{missing_sha}"]
    everything = list_wanted(fleet.db, missing_only=False)["wanted"]
    assert [(w["reference_key"], w["available_now"], w["nodes_now"]) for w in everything] == [
        (f"sha256:{missing_sha}", False, []), ("name:nowhere", True, ["gpu-linux"])]


def test_a_known_model_no_node_holds_is_wanted_by_its_sha256(fleet):
    sha = sha256_of(fleet.hero)
    fleet.windows.models.joinpath("Lora/sub/hero_renamed.safetensors").unlink()
    fleet.hero.unlink()
    fleet.sync(fleet.linux, fleet.windows)
    res = fleet.one(ModelReference("lora", hashes=(HashRef("autov2", sha[:10]),)))
    assert res.status == "resolved" and not res.held  # the registry keeps the model; no node holds it
    assert fleet.one(ModelReference("lora", name="hero")).status == "unknown"
    record_wanted(fleet.db, [res])
    (row,) = list_wanted(fleet.db)["wanted"]
    assert (row["reference_key"], row["model_id"], row["model"]["sha256"]) == (f"sha256:{sha}", res.model.id, sha)


def test_last_used_is_written_at_most_once_a_minute(fleet):
    (res,) = fleet.job({"prompt": "<lora:ink:1>"})[1]
    now = datetime(2026, 11, 24, 12, 0, 0, tzinfo=timezone.utc)
    stamp = lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    assert record_last_used(fleet.db, [res], stamp(now)) == 1
    (res,) = fleet.job({"prompt": "<lora:ink:1>"})[1]
    assert record_last_used(fleet.db, [res], stamp(now + timedelta(seconds=30))) == 0
    assert record_last_used(fleet.db, [res], stamp(now + timedelta(seconds=61))) == 1
    assert fleet.db.execute("SELECT last_used FROM models WHERE id = ?", [res.model.id]).fetchone()[0] == stamp(now + timedelta(seconds=61))


def test_known_embeddings_follow_the_registry(fleet):
    first = known_embeddings(fleet.db)
    assert known_embeddings(fleet.db) is first  # nothing changed: the same matcher
    assert first.names == ("easynegative",)
    register_node(fleet.db, "gpu-linux", "2030-01-01T00:00:00Z")  # a heartbeat's write: the set is the same
    fleet.linux.add("Lora", "extra.safetensors")
    fleet.sync(fleet.linux)  # a sync that adds no embedding
    assert known_embeddings(fleet.db) is first
    fleet.windows.add("embeddings", "sub/bad-hands-5.safetensors", model_factory.write_embedding)
    fleet.sync(fleet.windows)
    assert set(known_embeddings(fleet.db).names) == {"easynegative", "bad-hands-5"}
    fleet.db.conn.execute("DELETE FROM model_server_availability WHERE rel_name = ?", ["sub\\bad-hands-5.safetensors"])
    assert known_embeddings(fleet.db).names == ("easynegative",)  # whoever writes, the triggers count it
