"""What a model is, from its tensor names and shapes (no tensor loaded), with metadata as a hint.

Two tables: TYPE_RULES (first match wins) and BASE_BY_CONTEXT_DIM / BASE_MARKERS for the architecture.
Adding a kind or an architecture is one entry. What no rule recognises stays None.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

Tensors = dict[str, list[int]]


@dataclass(frozen=True)
class Keys:
    """Tensor names and shapes, with lookups the rules share."""

    tensors: Tensors

    def any(self, *fragments: str) -> bool:
        return any(f in name for name in self.tensors for f in fragments)

    def starts(self, *prefixes: str) -> bool:
        return any(name.startswith(prefixes) for name in self.tensors)

    def shapes(self, pattern: str) -> list[list[int]]:
        rx = re.compile(pattern)
        return [shape for name, shape in self.tensors.items() if rx.search(name)]


def _is_lora(k: Keys) -> bool:
    return k.any("lora_down", "lora_up", "lora_A.", "lora_B.", "lora.down.", "lora.up.", "hada_w1_a", "lokr_w1", "dora_scale")


def _has_unet(k: Keys) -> bool:
    return k.any("model.diffusion_model.", "double_blocks.", "joint_blocks.") or k.starts("input_blocks.", "down_blocks.")


def _is_locon(k: Keys) -> bool:
    return any(len(s) == 4 and s[2] > 1 for s in k.shapes(r"lora_down\.weight$"))


TYPE_RULES: list[tuple[str, Callable[[Keys], bool]]] = [
    ("loha", lambda k: k.any("hada_w1_a")),
    ("lokr", lambda k: k.any("lokr_w1")),
    ("dora", lambda k: k.any("dora_scale") and _is_lora(k)),
    ("locon", lambda k: _is_lora(k) and _is_locon(k)),
    ("lora", _is_lora),
    ("controlnet", lambda k: k.any("control_model.", "input_hint_block.", "controlnet_cond_embedding", "controlnet_blocks.", "zero_convs.")),
    ("embedding", lambda k: k.any("emb_params", "string_to_param") or set(k.tensors) <= {"clip_l", "clip_g"} and bool(k.tensors)),
    ("checkpoint", lambda k: _has_unet(k) and k.any("first_stage_model.", "cond_stage_model.", "conditioner.embedders.", "text_encoders.")),
    ("unet", _has_unet),
    ("vae", lambda k: k.any("encoder.down.", "decoder.up.") and k.any("decoder.conv_out") or k.starts("first_stage_model.")),
    ("upscaler", lambda k: k.starts("conv_first.", "model.0.weight", "RRDB_trunk.", "body.0.") or k.any("residual_group")),
    ("clip_vision", lambda k: k.any("vision_model.encoder.")),
    ("text_encoder", lambda k: k.any("encoder.block.0.layer.0.SelfAttention", "text_model.encoder.layers.", "transformer.resblocks.")),
]

# Cross-attention context width → base: the text encoder the diffusion model was trained with.
BASE_BY_CONTEXT_DIM = {768: "sd1", 1024: "sd2", 2048: "sdxl", 1280: "sdxl_refiner"}

# Unambiguous tensor-name markers of an architecture, checked before the context width.
BASE_MARKERS: list[tuple[str, tuple[str, ...]]] = [
    ("sd3", ("joint_blocks", "context_embedder.")),
    ("flux1", ("double_blocks", "single_blocks", "single_transformer_blocks")),
    ("sdxl", ("conditioner.embedders.1.", "lora_te1_", "lora_te2_", "label_emb.0.0.")),
    ("sd2", ("cond_stage_model.model.transformer.",)),
    ("sd1", ("cond_stage_model.transformer.text_model.",)),
]

CONTEXT_PATTERNS = (
    r"attn2[._]to_k(\.weight|\.lora_down\.weight|\.lora_A\.weight)$",
    r"attn2_to_k\.lora_down\.weight$",
    r"attn2_to_k\.hada_w1_b$",
)

# Metadata hints (kohya `ss_base_model_version`, `modelspec.architecture`, GGUF `general.architecture`).
HINT_PREFIXES: list[tuple[str, str]] = [
    ("sdxl_", "sdxl"),
    ("stable-diffusion-xl-v1-refiner", "sdxl_refiner"),
    ("stable-diffusion-xl", "sdxl"),
    ("sd_v1", "sd1"),
    ("stable-diffusion-v1", "sd1"),
    ("sd_v2", "sd2"),
    ("stable-diffusion-v2", "sd2"),
    ("stable-diffusion-3", "sd3"),
    ("stable-diffusion-v3", "sd3"),
    ("sd3", "sd3"),
    ("flux", "flux1"),
    ("chroma", "chroma"),
    ("lumina", "lumina2"),
    ("auraflow", "auraflow"),
    ("stable-video-diffusion", "svd"),
]

GGUF_TYPES = {"flux": ("unet", "flux1"), "sd3": ("unet", "sd3"), "sdxl": ("unet", "sdxl"), "sd1": ("unet", "sd1"),
              "t5": ("text_encoder", None), "t5encoder": ("text_encoder", None), "auraflow": ("unet", "auraflow")}


def _base_from_content(k: Keys, model_type: str | None) -> str | None:
    if model_type in ("vae", "text_encoder", "clip_vision", "upscaler", None):
        return None
    for base, markers in BASE_MARKERS:
        if k.any(*markers):
            return base
    for pattern in CONTEXT_PATTERNS:
        for shape in k.shapes(pattern):
            if len(shape) >= 2 and shape[-1] in BASE_BY_CONTEXT_DIM:
                return BASE_BY_CONTEXT_DIM[shape[-1]]
    if model_type == "embedding":
        widths = {s[-1] for s in k.tensors.values() if s}
        return {768: "sd1", 1024: "sd2"}.get(widths.pop()) if len(widths) == 1 else None
    return None


def base_from_hints(metadata: dict[str, Any]) -> str | None:
    for key in ("modelspec.architecture", "ss_base_model_version", "general.architecture"):
        value = metadata.get(key)
        if not isinstance(value, str):
            continue
        value = value.lower()
        for prefix, base in HINT_PREFIXES:
            if value.startswith(prefix):
                return base
    return None


def classify(tensors: Tensors, metadata: dict[str, Any]) -> tuple[str | None, str | None]:
    """(type, base) of a model; None where the content does not say."""
    gguf_arch = metadata.get("general.architecture")
    if isinstance(gguf_arch, str) and gguf_arch.lower() in GGUF_TYPES:
        model_type, base = GGUF_TYPES[gguf_arch.lower()]
        return model_type, base or base_from_hints(metadata)
    keys = Keys(tensors)
    model_type = next((t for t, rule in TYPE_RULES if rule(keys)), None)
    if model_type is None:
        return None, None
    base = _base_from_content(keys, model_type) or base_from_hints(metadata)
    return model_type, base
