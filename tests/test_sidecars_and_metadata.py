import copy
import json
from pathlib import Path

import pytest

from modelsync.shared.scan.metadata_merge import contributions_from_flat, merge
from modelsync.shared.scan.metadata_sources import civitai_base, from_a1111, from_civitai_model, from_civitai_version, from_embedded
from modelsync.shared.records import BASES, MetadataContribution
from modelsync.shared.scan.sidecars import SidecarError, SidecarIndex, read_sidecar

FIXTURES = Path(__file__).parent / "fixtures" / "civitai"
VERSION = json.loads((FIXTURES / "civitai_model_version_1387174_lora_flux_lora-manager.json").read_text())
MODEL = json.loads((FIXTURES / "civitai_models_by_id_1231067_lora-manager.json").read_text())
SHA = VERSION["files"][0]["hashes"]["SHA256"].lower()

# As A1111's LoRA editor and Civitai Helper write them (json.dump(indent=4)).
A1111_LORA = {"description": "A storybook style", "sd version": "SDXL", "activation text": "ppstorybook, soft light",
              "preferred weight": 0.7, "negative text": "photo", "notes": "v2 is better"}
FORGE_CHECKPOINT = {"description": "", "vae_te": ["ae.safetensors"], "sd_version_str": "SdVersion.Flux", "notes": ""}
SKELETON = {"id": "", "modelId": "", "baseModel": "Unknown", "files": [{"hashes": {"SHA256": SHA.upper()}}],
            "extensions": {"sd_civitai_helper": {"version": "1.8.13", "skeleton_file": True}}}


def write(tmp_path, name, data) -> str:
    p = tmp_path / name
    p.write_text(json.dumps(data, indent=4) if not isinstance(data, str) else data)
    return str(p)


@pytest.mark.parametrize(
    "name, data, kind",
    [
        ("x.civitai.info", VERSION, "civitai_version"),
        ("anything.json", VERSION, "civitai_version"),
        ("x.json", MODEL, "civitai_model"),
        ("x.json", A1111_LORA, "a1111"),
        ("x.json", FORGE_CHECKPOINT, "a1111"),
        ("x.civitai.info", {}, "civitai_unknown"),
        ("x.civitai.info", SKELETON, "civitai_unknown"),
        ("x.json", {}, None),
        ("config.json", {"_class_name": "UNet2DConditionModel"}, None),
        ("list.json", [1, 2], None),
    ],
)
def test_sidecars_are_classified_by_content(tmp_path, name, data, kind):
    sidecar = read_sidecar(write(tmp_path, name, data))
    assert (sidecar.kind if sidecar else None) == kind


@pytest.mark.parametrize(
    "content, reason",
    [('{"description": ', "not valid JSON"), (b"\xff\xfe\x00bad", "not UTF-8"), ("x" * 200, "over the")],
)
def test_broken_sidecars_raise_with_a_reason(tmp_path, content, reason):
    p = tmp_path / "x.json"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SidecarError, match=reason):
        read_sidecar(str(p), max_bytes=100)


def test_sidecars_match_by_stem_hash_and_file_name_longest_stem_wins(tmp_path):
    by_name = copy.deepcopy(VERSION)
    by_name["files"][0]["hashes"] = {"SHA256": "0" * 64}
    by_name["files"][0]["name"] = "renamed.safetensors"
    sidecars = [read_sidecar(write(tmp_path, n, d)) for n, d in [
        ("x.json", A1111_LORA), ("x.v2.json", A1111_LORA), ("x.v2.metadata.json", {"notes": "m"}),
        ("random-name.civitai.info", VERSION), ("other.civitai.info", by_name)]]
    index = SidecarIndex(sidecars, {"x", "x.v2", "renamed"})
    names = lambda model, sha=None: [Path(s.path).name for s in index.for_model(str(tmp_path / model), sha)]
    assert names("x.safetensors") == ["x.json"]
    assert names("x.v2.safetensors") == ["x.v2.json", "x.v2.metadata.json"]
    assert names("hashed.safetensors", SHA) == ["random-name.civitai.info"]
    assert names("renamed.safetensors") == ["other.civitai.info"]


def test_a1111_fields():
    assert from_a1111(A1111_LORA) == {
        "description": "A storybook style", "notes": "v2 is better", "activation_text": "ppstorybook, soft light",
        "trained_words": ["ppstorybook", "soft light"], "preferred_weight": 0.7, "negative_text": "photo", "base": "sdxl"}
    assert from_a1111(FORGE_CHECKPOINT) == {"base": "flux1"}
    assert from_a1111({"preferred weight": 0, "vae": "Automatic", "activation text": "a, b || c"})["trained_words"] == ["a, b", "c"]


def test_civitai_version_fields_pick_the_matching_file():
    f = from_civitai_version(VERSION, SHA)
    assert f["civitai_version_id"] == VERSION["id"] and f["civitai_id"] == VERSION["modelId"]
    assert f["name"] == f["civitai_model_name"] == VERSION["model"]["name"]
    assert (f["type"], f["base"], f["civitai_model_base"], f["civitai_model_type"]) == ("lora", "flux1", "Flux.1 D", "LORA")
    assert f["civitai_trained_words"] == VERSION["trainedWords"]
    assert f["civitai_file_size_kb"] == VERSION["files"][0]["sizeKB"]
    assert f["civitai_image_url"] == VERSION["images"][0]["url"]
    assert f["civitai_model_version_date"] == VERSION["publishedAt"]


def test_civitai_model_object_uses_the_version_with_the_hash():
    f = from_civitai_model(MODEL, SHA)
    assert f["civitai_id"] == MODEL["id"] and f["civitai_version_id"] == MODEL["modelVersions"][0]["id"]
    assert f["civitai_model_name"] == MODEL["name"]
    assert from_civitai_model(MODEL, "1" * 64) == {}


def test_every_civitai_base_model_maps_to_a_known_base_or_none():
    enums = json.loads((FIXTURES / "civitai_enums_lora-manager.json").read_text())
    mapped = {name: civitai_base(name) for name in enums["BaseModel"]}
    assert all(v is None or v in BASES for v in mapped.values())
    expected = {"SD 1.5": "sd1", "SD 2.1 768": "sd2", "SDXL 1.0": "sdxl", "Pony": "sdxl", "Illustrious": "sdxl",
                "NoobAI": "sdxl", "SD 3.5 Large": "sd3", "Flux.1 D": "flux1", "Flux.1 S": "flux1", "Pony V7": "auraflow",
                "Flux.2 D": None, "Wan Video": None, "Other": None}
    assert {k: mapped[k] for k in expected} == expected


def test_embedded_fields_from_kohya_and_modelspec():
    f = from_embedded({"ss_output_name": "hero", "modelspec.title": "Hero", "modelspec.author": "me",
                       "modelspec.trigger_phrase": "hero, cape", "ss_base_model_version": "sd_v1", "ss_resolution": "(512, 512)"}, "lora", None)
    assert f == {"type": "lora", "base": "sd1", "name": "Hero", "output_name": "hero", "author": "me",
                 "trained_words": ["hero", "cape"], "resolution": "(512, 512)"}


def test_merge_priority_null_only_and_overrides():
    contributions = [
        MetadataContribution("embedded", {"description": "emb", "base": "sd1", "author": "me"}),
        MetadataContribution("a1111", {"description": "a1111"}),
        MetadataContribution("civitai_json", {"description": "civ", "base": "sdxl", "name": "Civ"}),
    ]
    fresh = merge(contributions)
    assert fresh.fields == {"description": "a1111", "base": "sdxl", "name": "Civ", "author": "me"}
    assert fresh.field_sources == {"description": "a1111", "base": "civitai_json", "name": "civitai_json", "author": "embedded"}
    assert fresh.metadata_source == "a1111"
    later = merge([MetadataContribution("a1111", {"base": "sd2", "notes": "n", "name": "New"})], existing=fresh.fields,
                  existing_sources=fresh.field_sources, overrides={"name": "Operator"})
    assert later.fields["base"] == "sdxl" and later.fields["notes"] == "n" and later.fields["name"] == "Operator"
    assert later.changed == {"notes", "name"} and later.field_sources["name"] == "manual" and later.metadata_source == "manual"
    assert merge([], existing=fresh.fields, existing_sources=fresh.field_sources).changed == set()


def test_contributions_from_flat_round_trip():
    groups = {c.source: c.fields for c in contributions_from_flat({"a": 1, "description": "d", "name": "n"}, {"description": "a1111", "name": "bogus"})}
    assert groups == {"a1111": {"description": "d"}, "embedded": {"a": 1, "name": "n"}}
