"""Real, small .safetensors/.gguf files with the tensor names and shapes of real models (safetensors package).

Only the dimensions the classifier reads are real (e.g. cross-attention context width); the rest are tiny.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

CONTEXT = {"sd1": 768, "sd2": 1024, "sdxl": 2048}
_seed = iter(range(1, 10**9))


def _t(*shape: int) -> np.ndarray:
    """A small float16 tensor with distinct content per call, so every file has its own SHA256."""
    return np.full(shape, next(_seed) % 1000, dtype=np.float16)


def _save(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def write_checkpoint(path, base: str = "sd1", metadata: dict[str, str] | None = None) -> Path:
    """A full checkpoint (unet + vae + text encoder) of base sd1 | sd2 | sdxl | sd3 | flux1."""
    t: dict[str, np.ndarray] = {"first_stage_model.decoder.conv_out.weight": _t(3, 4, 1, 1)}
    if base in CONTEXT:
        t["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] = _t(4, CONTEXT[base])
    if base == "sd1":
        t["cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"] = _t(2, 2)
    elif base == "sd2":
        t["cond_stage_model.model.transformer.resblocks.0.mlp.c_fc.weight"] = _t(2, 2)
    elif base == "sdxl":
        t["conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight"] = _t(2, 2)
        t["conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc.weight"] = _t(2, 2)
    elif base == "sd3":
        t["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"] = _t(2, 2)
        t["text_encoders.clip_l.transformer.text_model.final_layer_norm.weight"] = _t(2)
    elif base == "flux1":
        t["model.diffusion_model.double_blocks.0.img_attn.qkv.weight"] = _t(2, 2)
        t["model.diffusion_model.single_blocks.0.linear1.weight"] = _t(2, 2)
        t["text_encoders.clip_l.transformer.text_model.final_layer_norm.weight"] = _t(2)
    return _save(path, t, metadata)


def write_unet(path, base: str = "flux1", metadata: dict[str, str] | None = None) -> Path:
    """A diffusion model alone (as Forge loads Flux): flux1 | sdxl."""
    if base == "flux1":
        t = {"double_blocks.0.img_attn.qkv.weight": _t(2, 2), "single_blocks.0.linear1.weight": _t(2, 2)}
    else:
        t = {f"model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": _t(4, CONTEXT[base])}
    return _save(path, t, metadata)


def write_lora(path, base: str = "sd1", variant: str = "lora", metadata: dict[str, str] | None = None) -> Path:
    """A kohya-style LoRA (variant lora | locon | loha | lokr | dora) of base sd1 | sd2 | sdxl | flux1."""
    t: dict[str, np.ndarray] = {}
    if base == "flux1":
        unet = "lora_unet_double_blocks_0_img_attn_qkv"
        t[f"{unet}.lora_down.weight"] = _t(4, 8)
        t[f"{unet}.lora_up.weight"] = _t(8, 4)
    else:
        attn = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k" if base == "sdxl" else "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
        te = "lora_te1_text_model_encoder_layers_0_mlp_fc1" if base == "sdxl" else "lora_te_text_model_encoder_layers_0_mlp_fc1"
        if variant == "loha":
            t[f"{attn}.hada_w1_a"] = _t(8, 4)
            t[f"{attn}.hada_w1_b"] = _t(4, CONTEXT[base])
        elif variant == "lokr":
            t[f"{attn}.lokr_w1"] = _t(4, 4)
            t[f"{attn}.lokr_w2"] = _t(4, CONTEXT[base] // 4)
        else:
            t[f"{attn}.lora_down.weight"] = _t(4, CONTEXT[base])
            t[f"{attn}.lora_up.weight"] = _t(8, 4)
            t[f"{te}.lora_down.weight"] = _t(4, 8)
            t[f"{te}.lora_up.weight"] = _t(8, 4)
            if variant == "locon":
                t["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"] = _t(4, 8, 3, 3)
                t["lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight"] = _t(8, 4, 1, 1)
            if variant == "dora":
                t[f"{attn}.dora_scale"] = _t(1, 8)
        t[f"{attn}.alpha"] = _t(1)
    return _save(path, t, metadata)


def write_vae(path, metadata: dict[str, str] | None = None) -> Path:
    return _save(path, {"encoder.down.0.block.0.conv1.weight": _t(4, 3, 3, 3), "decoder.up.0.block.0.conv1.weight": _t(4, 4, 3, 3),
                        "decoder.conv_out.weight": _t(3, 4, 3, 3)}, metadata)


def write_embedding(path, base: str = "sd1") -> Path:
    if base == "sdxl":
        return _save(path, {"clip_l": _t(2, 768), "clip_g": _t(2, 1280)}, None)
    return _save(path, {"emb_params": _t(2, CONTEXT[base])}, None)


def write_controlnet(path, base: str = "sd1") -> Path:
    return _save(path, {"control_model.input_hint_block.0.weight": _t(4, 3, 3, 3),
                        "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": _t(4, CONTEXT[base])}, None)


def write_upscaler(path) -> Path:
    return _save(path, {"conv_first.weight": _t(4, 3, 3, 3), "body.0.rdb1.conv1.weight": _t(4, 4, 3, 3)}, None)


def write_text_encoder(path, kind: str = "t5") -> Path:
    if kind == "t5":
        return _save(path, {"encoder.block.0.layer.0.SelfAttention.q.weight": _t(4, 4)}, None)
    return _save(path, {"text_model.encoder.layers.0.mlp.fc1.weight": _t(4, 4)}, None)


def write_padded(path, size_bytes: int, metadata: dict[str, str] | None = None) -> Path:
    """A LoRA-shaped .safetensors of about size_bytes (a big uint8 tensor), so AutoV1 is defined past 2 MiB."""
    pad = np.frombuffer(np.random.default_rng(next(_seed)).bytes(size_bytes), dtype=np.uint8)
    return _save(path, {"lora_unet_x.lora_down.weight": _t(4, 768), "pad": pad}, metadata)


def write_gguf(path, arch: str = "flux") -> Path:
    """A tiny real GGUF file (gguf.GGUFWriter) with a general.architecture key and one tensor."""
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string("general.name", "tiny")
    writer.add_tensor("double_blocks.0.img_attn.qkv.weight", np.ones((2, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
