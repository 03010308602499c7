"""Reading what a job needs from each form a queue sends, and writing it back in one node's names (no registry)."""
import copy
import json

import pytest
from support_jobs import INFOTEXT_1_9_4

from modelsync.shared.jobs.requirements import (
    MAX_JOB_DEPTH,
    EmbeddingNames,
    HashRef,
    JobFormatError,
    LocalName,
    ModelReference,
    detect_format,
    extract,
    rewrite,
)

# Real infotexts ("parameters" text of images made by A1111), as published with their images.
INFOTEXT_1_8_CONTROLNET = (
    "sharp_two_hand_sword\n"
    "Negative prompt: (painting by bad-artist-anime:0.9), (painting by bad-artist:0.9), watermark, text, error, blurry, "
    "jpeg artifacts, cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, "
    "artist name, (worst quality, low quality:1.4), bad anatomy, watermark, signature, text, logo\n"
    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 238572726, Size: 512x512, Model hash: cbfba64e66, "
    "Model: counterfeitV30_v30, VAE hash: df3c506e51, VAE: kl-f8-anime2.ckpt, ControlNet 0: \"Module: lineart_standard "
    "(from white bg & black line), Model: control_v11p_sd15_lineart [43d4be0d], Weight: 1, Resize Mode: Resize and Fill, "
    "Low Vram: False, Processor Res: 512, Guidance Start: 0, Guidance End: 1, Pixel Perfect: False, Control Mode: Balanced, "
    'Hr Option: Both, Save Detected Map: True", Version: v1.8.0'
)


def a1111_txt2img() -> dict:
    """A /sdapi/v1/txt2img body as a queue sends it to A1111 1.10 / Forge, with every model-bearing field."""
    return {
        "prompt": "masterpiece, 1girl, <lora:Hero Style v2:0.8>, <lyco:styles\\ink:0.6:0.4>, EasyNegative in a word",
        "negative_prompt": "lowres, bad-hands-5, <lora:Hero Style v2:-0.3>",
        "styles": [],
        "seed": 1234,
        "sampler_name": "DPM++ 2M",
        "scheduler": "Karras",
        "batch_size": 1,
        "steps": 24,
        "cfg_scale": 6.5,
        "width": 832,
        "height": 1216,
        "enable_hr": True,
        "hr_scale": 1.5,
        "hr_upscaler": "Latent",
        "hr_checkpoint_name": "Use same checkpoint",
        "hr_prompt": "<lora:detail_tweaker:0.5>",
        "hr_negative_prompt": "",
        "refiner_checkpoint": "sd_xl_refiner_1.0 [7440042bbd]",
        "refiner_switch_at": 0.8,
        "override_settings": {"sd_model_checkpoint": "SDXL/juggernautXL_v9.safetensors [c9e3e68f89]", "sd_vae": "sdxl_vae.safetensors",
                              "CLIP_stop_at_last_layers": 2},
        "override_settings_restore_afterwards": True,
        "send_images": True,
        "save_images": False,
        "alwayson_scripts": {
            "ControlNet": {"args": [
                {"enabled": True, "module": "canny", "model": "control_v11p_sd15_canny [d14c016b]", "weight": 1.0,
                 "image": "iVBORw0KGgo=", "resize_mode": "Crop and Resize", "pixel_perfect": False},
                {"enabled": False, "module": "depth", "model": "control_v11f1p_sd15_depth [cfd03158]"},
                {"enabled": True, "module": "none", "model": "None"},
            ]},
            "ADetailer": {"args": [True, False, {"ad_model": "face_yolov8n.pt"}]},
        },
    }


def refs(parsed) -> dict:
    return {(r.reference.kind, r.reference.name): r for r in parsed.requirements}


def test_a1111_body_names_every_model_with_where_it_is_named():
    embeddings = EmbeddingNames(["EasyNegative", "bad-hands-5", "word"])
    parsed = extract(a1111_txt2img(), "auto", embeddings)
    assert parsed.format == "a1111"
    found = refs(parsed)
    assert set(found) == {
        ("checkpoint", "SDXL/juggernautXL_v9.safetensors"), ("checkpoint", "sd_xl_refiner_1.0"),
        ("vae", "sdxl_vae.safetensors"), ("lora", "Hero Style v2"), ("lora", "styles\\ink"), ("lora", "detail_tweaker"),
        ("embedding", "EasyNegative"), ("embedding", "bad-hands-5"), ("embedding", "word"),
        ("controlnet", "control_v11p_sd15_canny"),
    }
    checkpoint = found[("checkpoint", "SDXL/juggernautXL_v9.safetensors")]
    assert checkpoint.reference.hashes == (HashRef("any", "c9e3e68f89"),)
    assert checkpoint.fields == ["job.override_settings.sd_model_checkpoint"]
    assert found[("lora", "Hero Style v2")].fields == ["job.prompt", "job.negative_prompt"]
    assert found[("lora", "Hero Style v2")].written == "<lora:Hero Style v2:0.8>"
    assert found[("lora", "detail_tweaker")].fields == ["job.hr_prompt"]
    canny = found[("controlnet", "control_v11p_sd15_canny")]
    assert canny.reference.hashes == (HashRef("autov1", "d14c016b"),)
    assert canny.fields == ["job.alwayson_scripts.ControlNet.args[0].model"]


def test_prompt_tags_follow_a1111s_extra_network_syntax():
    parsed = extract({"prompt": "<LORA:upper:1> <lora:a b:1:0.5> <lora:te_unet:te=0.5:unet=1> <hypernet:hn:1> <foo:bar:1> <lora:x>"})
    assert {(r.reference.kind, r.reference.name) for r in parsed.requirements} == {
        ("lora", "a b"), ("lora", "te_unet"), ("hypernetwork", "hn"), ("lora", "x")}  # type names are case-sensitive


def test_embeddings_are_whole_words_in_any_case_and_never_inside_a_tag():
    embeddings = EmbeddingNames(["easynegative", "bad-hands-5", "ng_deepnegative_v1_75t", "neg"])
    text = "EASYNEGATIVE, (bad-hands-5:1.2), bad-hands-50, xeasynegative, <lora:easynegative:1>, negative, neg."
    parsed = extract({"prompt": text}, embeddings=embeddings)
    found = [(r.reference.kind, r.reference.name) for r in parsed.requirements]
    assert sorted(found) == [("embedding", "EASYNEGATIVE"), ("embedding", "bad-hands-5"), ("embedding", "neg"),
                             ("lora", "easynegative")]
    assert len(parsed.requirements) == 4


def test_an_empty_registry_finds_no_embeddings():
    assert extract({"prompt": "easynegative"}).requirements == []


def test_real_infotext_names_the_checkpoint_vae_loras_and_embeddings_with_their_hashes():
    parsed = extract(INFOTEXT_1_9_4, embeddings=EmbeddingNames(["badhandv4"]))
    assert parsed.format == "infotext"
    found = refs(parsed)
    checkpoint = found[("checkpoint", "fantasticmix_k2")].reference
    assert checkpoint.hashes == (HashRef("any", "19bbe9faa4"),) and checkpoint.hash_first
    assert found[("vae", "vae-ft-mse-840000-ema-pruned.safetensors")].reference.hashes == (HashRef("any", "07af11b95c"),)
    assert found[("lora", "LCM_15")].reference.hashes == (HashRef("any", "aaebf6360f7d"),)
    assert found[("lora", "ip-adapter-faceid-plusv2_sd15_lora")].reference.hashes == (HashRef("any", "a95a0f4bdcb9"),)
    # one embedding matched in the prompt, one only in TI hashes: both are needed, each with its hash
    assert found[("embedding", "badhandv4")].reference.hashes == (HashRef("any", "5e40d722fc3d"),)
    assert found[("embedding", "MajicNegative_V2")].reference.hashes == (HashRef("any", "a53884ef726b"),)
    assert found[("embedding", "badhandv4")].fields == ["job:negative prompt"]
    assert len(parsed.requirements) == 6


def test_real_infotext_controlnet_units_are_read():
    parsed = extract(INFOTEXT_1_8_CONTROLNET, embeddings=EmbeddingNames(["bad-artist", "bad-artist-anime"]))
    found = refs(parsed)
    assert found[("controlnet", "control_v11p_sd15_lineart")].reference.hashes == (HashRef("autov1", "43d4be0d"),)
    assert found[("controlnet", "control_v11p_sd15_lineart")].fields == ["job:ControlNet 0"]
    assert ("embedding", "bad-artist-anime") in found and ("embedding", "bad-artist") in found
    assert found[("vae", "kl-f8-anime2.ckpt")].reference.hashes == (HashRef("any", "df3c506e51"),)


def test_a_bodys_own_fields_beat_its_infotext():
    body = {"infotext": INFOTEXT_1_9_4, "prompt": "just this <lora:mine:1>",
            "override_settings": {"sd_model_checkpoint": "other.safetensors"}}
    found = refs(extract(body))
    assert ("checkpoint", "fantasticmix_k2") not in found and ("lora", "LCM_15") not in found
    assert ("checkpoint", "other.safetensors") in found and ("lora", "mine") in found
    assert ("vae", "vae-ft-mse-840000-ema-pruned.safetensors") in found  # not set in the body: the infotext's counts
    assert found[("vae", "vae-ft-mse-840000-ema-pruned.safetensors")].fields == ["job.infotext:VAE"]


def test_stablequeue_jobs():
    # as StableQueue's README and docs/API.md send them
    job = {"target_server_alias": "ArchLinux", "generation_params": {
        "positive_prompt": "a beautiful landscape, masterpiece, detailed <lora:add_detail:0.5>",
        "negative_prompt": "ugly, blurry, low quality", "checkpoint_name": "realismEngineSDXL_v30VAE.safetensors",
        "model_hash": "abc123def456", "width": 1024, "height": 1024, "steps": 20, "cfg_scale": 7, "sampler_name": "Euler a",
        "seed": -1}}
    parsed = extract(job)
    assert parsed.format == "stablequeue"
    found = refs(parsed)
    checkpoint = found[("checkpoint", "realismEngineSDXL_v30VAE.safetensors")]
    assert checkpoint.reference.hashes == (HashRef("any", "abc123def456"),)
    assert checkpoint.fields == ["job.generation_params.checkpoint_name", "job.generation_params.model_hash"]
    assert found[("lora", "add_detail")].fields == ["job.generation_params.positive_prompt"]

    bare = extract({"positive_prompt": "x", "sd_checkpoint": "Pony\\cyberrealisticPony_v8.safetensors"})
    assert [(r.reference.kind, r.reference.name) for r in bare.requirements] == [("checkpoint", "Pony\\cyberrealisticPony_v8.safetensors")]
    raw = extract({"target_server_alias": "x", "generation_info_raw": INFOTEXT_1_9_4, "generation_params": {"checkpoint_name": "ignored"}})
    assert ("checkpoint", "fantasticmix_k2") in refs(raw) and ("checkpoint", "ignored") not in refs(raw)
    by_hash = extract({"generation_params": {"positive_prompt": "x", "sha256_hash": "AB" * 32}})
    assert by_hash.requirements[0].reference == ModelReference("checkpoint", hashes=(HashRef("sha256", "ab" * 32),))


def test_explicit_requirement_lists():
    items = [{"type": "lora", "sha256": "0A" * 32}, {"type": "LyCORIS", "name": "ink"}, {"type": "checkpoint", "autov2": "6CE0161689"},
             {"type": "checkpoint", "name": "v1-5-pruned-emaonly.safetensors [6ce0161689]"},
             {"type": "embedding", "autov3": "34A22376739D"}, {"type": "lora", "civitai_version_id": "1387174"}]
    parsed = extract(items)
    assert parsed.format == "requirements"
    assert [r.reference for r in parsed.requirements] == [
        ModelReference("lora", hashes=(HashRef("sha256", "0a" * 32),)),
        ModelReference("lora", name="ink"),
        ModelReference("checkpoint", hashes=(HashRef("autov2", "6ce0161689"),)),
        ModelReference("checkpoint", name="v1-5-pruned-emaonly.safetensors", hashes=(HashRef("any", "6ce0161689"),)),
        ModelReference("embedding", hashes=(HashRef("autov3", "34a22376739d"),)),
        ModelReference("lora", civitai_version_id=1387174),
    ]


def test_detected_formats():
    assert detect_format(a1111_txt2img()) == "a1111"
    assert detect_format("a cat\nSteps: 20, Sampler: Euler, Seed: 1") == "infotext"
    assert detect_format({"generation_params": {}}) == "stablequeue"
    assert detect_format([]) == "requirements"


def test_text_that_is_json_is_read_as_json():
    job = a1111_txt2img()
    parsed = extract("\n  " + json.dumps(job, indent=2))
    assert (parsed.format, parsed.job) == ("a1111", job)
    assert [r.reference for r in parsed.requirements] == [r.reference for r in extract(job).requirements]
    assert extract('[{"type": "lora", "name": "ink"}]').format == "requirements"
    assert extract('{"generation_params": {"checkpoint_name": "x"}}').format == "stablequeue"
    # an infotext inside a JSON string (its parameter line escaped) does not make the text an infotext
    assert extract(json.dumps({"infotext": "a cat\nSteps: 20, Sampler: Euler, Seed: 1"})).format == "a1111"


@pytest.mark.parametrize("text, message", [
    ('{"prompt": "x", "steps": "many"', "is not valid JSON: Expecting ',' delimiter at line 1 column 32"),
    ('{"prompt": ..., "sd_model_checkpoint": "nonexistent_model"}', "is not valid JSON: Expecting value at line 1 column 12"),
    ('{\n  "prompt": "x",\n  "infotext": "a\\nSteps: 20, Sampler: Euler, Seed: 1"\n', "is not valid JSON: Expecting"),
    ("{a castle}", "is not valid JSON: Expecting property name enclosed in double quotes"),
    ("[" * 100_000, "is JSON nested too deeply to read"),
    ('{"a": ' * 100_000, "is JSON nested too deeply to read"),
])
def test_text_that_starts_like_json_and_is_not_an_infotext_must_be_json(text, message):
    with pytest.raises(JobFormatError) as caught:
        extract(text)
    assert caught.value.field == "job" and caught.value.message.startswith(message)
    assert 'send "format": "infotext"' in caught.value.message


def test_a_job_nested_deeper_than_the_limit_is_refused():
    deep = {"prompt": "<lora:ink:1>", "alwayson_scripts": {"x": {"args": [[[]]]}}}
    leaf = deep["alwayson_scripts"]["x"]["args"][0][0]
    for _ in range(MAX_JOB_DEPTH - 6):
        leaf.append([])
        leaf = leaf[0]
    assert [r.reference.name for r in extract(deep).requirements] == ["ink"]  # exactly MAX_JOB_DEPTH deep
    leaf.append({})
    for job in (deep, json.dumps(deep), [deep]):
        with pytest.raises(JobFormatError) as caught:
            extract(job)
        assert (caught.value.field, caught.value.message) == ("job", f"nests arrays or objects more than {MAX_JOB_DEPTH} deep")


def test_a_prompt_starting_with_a_bracket_is_still_an_infotext():
    infotext = "[masterpiece], {castle} <lora:ink:0.5>\nNegative prompt: [blurry]\nSteps: 20, Sampler: Euler a, Seed: 1, Size: 512x512"
    parsed = extract(infotext)
    assert (parsed.format, [r.reference.name for r in parsed.requirements]) == ("infotext", ["ink"])
    replaced = INFOTEXT_1_9_4.replace("1girl,A superstar", "[1girl], {A superstar}")
    assert extract(replaced).format == "infotext"
    for text in ('{"prompt": "<lora:ink:1>"}', "{a castle} <lora:ink:1>", "[" * 100_000):
        parsed = extract(text, "infotext")  # said to be an infotext: read as one, whatever it looks like
        assert parsed.format == "infotext" and parsed.job == text
    assert [r.reference.name for r in extract('{"prompt": "<lora:ink:1>"}', "infotext").requirements] == ["ink"]


@pytest.mark.parametrize("job, fmt, field", [
    ({"override_settings": []}, "auto", "job.override_settings"),
    ({"override_settings": {"sd_model_checkpoint": 12}}, "auto", "job.override_settings.sd_model_checkpoint"),
    ({"prompt": ["ok", 3]}, "auto", "job.prompt"),
    ({"prompt": "a <lora::0.5> b"}, "auto", "job.prompt"),
    ({"alwayson_scripts": {"controlnet": {"args": {"model": "x"}}}}, "auto", "job.alwayson_scripts.controlnet.args"),
    ({"alwayson_scripts": {"controlnet": {"args": ["unit"]}}}, "auto", "job.alwayson_scripts.controlnet.args[0]"),
    ({"alwayson_scripts": {"ControlNet": {"args": [{"model": ["x"]}]}}}, "auto", "job.alwayson_scripts.ControlNet.args[0].model"),
    ({"override_settings": {"forge_additional_modules": "ae.safetensors"}}, "auto", "job.override_settings.forge_additional_modules"),
    ({"infotext": 5}, "auto", "job.infotext"),
    ("a\nSteps: 1, Seed: 2, Lora hashes: \"x 0123456789ab\"", "auto", "job:Lora hashes"),
    ("a\nSteps: 1, Seed: 2, Model hash: xyz", "auto", "job:Model hash"),
    ({"generation_params": {"checkpoint_name": "x", "model_hash": "not-hex"}}, "auto", "job.generation_params.model_hash"),
    ({"generation_params": "x"}, "auto", "job.generation_params"),
    ([{"type": "lora"}], "auto", "job[0]"),
    ([{"type": "sampler", "name": "x"}], "auto", "job[0].type"),
    ([{"type": "lora", "sha256": "abc"}], "auto", "job[0].sha256"),
    ([{"type": "lora", "civitai_version_id": -3}], "auto", "job[0].civitai_version_id"),
    ([{"name": "x"}], "auto", "job[0].type"),
    (7, "auto", "job"),
    ("", "infotext", "job"),
    ({}, "comfyui", "format"),
    ({"prompt": "x"}, "requirements", "job"),
])
def test_malformed_jobs_name_the_field(job, fmt, field):
    with pytest.raises(JobFormatError) as error:
        extract(job, fmt)
    assert error.value.field == field and error.value.message


def _names(parsed, table: dict) -> dict:
    """reference key -> LocalName, from {(kind, name as written): that node's name}."""
    out = {}
    for r in parsed.requirements:
        name = table[(r.reference.kind, r.reference.name)]
        out[r.reference.key] = LocalName(name, name.rsplit("/", 1)[-1].split(".")[0], name.rsplit("/", 1)[-1])
    return out


def test_rewrite_changes_exactly_the_model_names():
    body = a1111_txt2img()
    original = copy.deepcopy(body)
    embeddings = EmbeddingNames(["EasyNegative", "bad-hands-5"])
    parsed = extract(body, embeddings=embeddings)
    table = {
        ("checkpoint", "SDXL/juggernautXL_v9.safetensors"): "XL\\juggernaut.safetensors",
        ("checkpoint", "sd_xl_refiner_1.0"): "refiners/sd_xl_refiner_1.0.safetensors",
        ("vae", "sdxl_vae.safetensors"): "sdxl_vae_fp16.safetensors",
        ("lora", "Hero Style v2"): "hero_style_v2", ("lora", "styles\\ink"): "ink", ("lora", "detail_tweaker"): "detail_tweaker",
        ("embedding", "EasyNegative"): "easynegative", ("embedding", "bad-hands-5"): "bad-hands-5",
        ("controlnet", "control_v11p_sd15_canny"): "control_v11p_sd15_canny [d14c016b]",
    }
    result = rewrite(parsed, _names(parsed, table))
    out = result.payload
    assert body == original  # the job itself is never changed
    assert out["prompt"] == "masterpiece, 1girl, <lora:hero_style_v2:0.8>, <lyco:ink:0.6:0.4>, easynegative in a word"
    assert out["negative_prompt"] == "lowres, bad-hands-5, <lora:hero_style_v2:-0.3>"
    assert out["hr_prompt"] == "<lora:detail_tweaker:0.5>"
    assert out["override_settings"] == {"sd_model_checkpoint": "XL\\juggernaut.safetensors", "sd_vae": "sdxl_vae_fp16.safetensors",
                                        "CLIP_stop_at_last_layers": 2}
    assert out["refiner_checkpoint"] == "refiners/sd_xl_refiner_1.0.safetensors"
    assert out["hr_checkpoint_name"] == "Use same checkpoint"
    units = out["alwayson_scripts"]["ControlNet"]["args"]
    assert units[0]["model"] == "control_v11p_sd15_canny [d14c016b]" and units[0]["image"] == "iVBORw0KGgo="
    assert units[1:] == original["alwayson_scripts"]["ControlNet"]["args"][1:]
    assert out["alwayson_scripts"]["ADetailer"] == original["alwayson_scripts"]["ADetailer"]
    untouched = {k for k in original if k not in ("prompt", "negative_prompt", "hr_prompt", "override_settings",
                                                  "refiner_checkpoint", "alwayson_scripts")}
    assert {k: out[k] for k in untouched} == {k: original[k] for k in untouched}
    assert result.override_settings == {"sd_model_checkpoint": "XL\\juggernaut.safetensors", "sd_vae": "sdxl_vae_fp16.safetensors"}


def test_rewritten_infotext_keeps_everything_but_the_names_and_pins_the_checkpoint():
    parsed = extract(INFOTEXT_1_9_4, embeddings=EmbeddingNames(["badhandv4"]))
    table = {("checkpoint", "fantasticmix_k2"): "sd15/fantasticmix_k2.safetensors",
             ("vae", "vae-ft-mse-840000-ema-pruned.safetensors"): "vae-ft-mse.safetensors",
             ("lora", "LCM_15"): "lcm-lora-sd15", ("lora", "ip-adapter-faceid-plusv2_sd15_lora"): "ip-adapter-faceid-plusv2_sd15_lora",
             ("embedding", "badhandv4"): "badhandv4", ("embedding", "MajicNegative_V2"): "majicNegative_v2"}
    result = rewrite(parsed, _names(parsed, table))
    expected = (INFOTEXT_1_9_4.replace("<lora:LCM_15:1>", "<lora:lcm-lora-sd15:1>")
                .replace("Negative prompt: MajicNegative_V2,", "Negative prompt: majicNegative_v2,")
                .replace("VAE: vae-ft-mse-840000-ema-pruned.safetensors", "VAE: vae-ft-mse.safetensors")
                .replace('"LCM_15: aaebf6360f7d', '"lcm-lora-sd15: aaebf6360f7d')
                .replace('"MajicNegative_V2: a53884ef726b', '"majicNegative_v2: a53884ef726b'))
    assert result.payload == expected
    assert result.override_settings == {"sd_model_checkpoint": "sd15/fantasticmix_k2.safetensors", "sd_vae": "vae-ft-mse.safetensors"}

    # inside an A1111 body the infotext's checkpoint is pinned by name: the node may not know the hash as an alias
    body = {"infotext": INFOTEXT_1_9_4, "steps": 6}
    parsed = extract(body, embeddings=EmbeddingNames(["badhandv4"]))
    out = rewrite(parsed, _names(parsed, table)).payload
    assert out["override_settings"] == {"sd_model_checkpoint": "sd15/fantasticmix_k2.safetensors"}
    assert out["infotext"] == expected and out["steps"] == 6


def test_rewritten_controlnet_infotext_stays_quoted():
    parsed = extract(INFOTEXT_1_8_CONTROLNET)
    table = {("checkpoint", "counterfeitV30_v30"): "anime/counterfeitV30_v30.safetensors", ("vae", "kl-f8-anime2.ckpt"): "kl-f8-anime2.ckpt",
             ("controlnet", "control_v11p_sd15_lineart"): "control_v11p_sd15_lineart_fp16 [5c23b17d]"}
    out = rewrite(parsed, _names(parsed, table)).payload
    assert out == INFOTEXT_1_8_CONTROLNET.replace("Model: control_v11p_sd15_lineart [43d4be0d]",
                                                  "Model: control_v11p_sd15_lineart_fp16 [5c23b17d]")


def test_rewrite_of_stablequeue_and_lists_and_a_hash_only_checkpoint_is_pinned_by_name():
    job = {"target_server_alias": "Laptop", "generation_params": {"positive_prompt": "x <lora:a:1>", "model_hash": "6ce0161689"}}
    parsed = extract(job)
    names = {r.reference.key: LocalName(n, n, n) for r, n in zip(parsed.requirements, ["sub\\v15.safetensors", "a_v2"])}
    out = rewrite(parsed, names).payload
    assert out == {"target_server_alias": "Laptop", "generation_params": {
        "positive_prompt": "x <lora:a_v2:1>", "model_hash": "6ce0161689", "checkpoint_name": "sub\\v15.safetensors"}}
    items = [{"type": "lora", "name": "ink", "note": "kept"}]
    parsed = extract(items)
    out = rewrite(parsed, {parsed.requirements[0].reference.key: LocalName("ink_v3", "ink_v3", "ink_v3.safetensors")}).payload
    assert out == [{"type": "lora", "name": "ink", "note": "kept", "local_name": "ink_v3"}]
    json.dumps(out)


def test_too_many_models_is_refused():
    prompt = " ".join(f"<lora:l{i}:1>" for i in range(300))
    with pytest.raises(JobFormatError, match="more than 256"):
        extract({"prompt": prompt})
