"""The standard model folders of a Forge/A1111 install and the role each gives its files."""
from __future__ import annotations

import os

from ..records import Root

# sub-folder of models/ -> role (what the host loads files from there as)
STANDARD_SUBFOLDERS: dict[str, str] = {
    "Stable-diffusion": "checkpoint",
    "Lora": "lora",
    "LyCORIS": "lora",
    "VAE": "vae",
    "embeddings": "embedding",
    "ControlNet": "controlnet",
    "ESRGAN": "upscaler",
    "RealESRGAN": "upscaler",
    "DAT": "upscaler",
    "SwinIR": "upscaler",
    "ScuNET": "upscaler",
    "LDSR": "upscaler",
    "text_encoder": "text_encoder",
    "hypernetworks": "hypernetwork",
}


def is_models_folder(path: str) -> bool:
    return any(os.path.isdir(os.path.join(path, name)) for name in ("Stable-diffusion", "Lora", "VAE"))


def roots_for(path: str) -> list[Root]:
    """Roots for one command-line folder: a models/ folder (or a webui folder holding one) maps its standard
    sub-folders to roles and keeps the rest role-less; any other folder is one role-less root."""
    if not is_models_folder(path) and is_models_folder(os.path.join(path, "models")):
        webui = path
        path = os.path.join(path, "models")
        roots = roots_for(path)
        embeddings = os.path.join(webui, "embeddings")
        if os.path.isdir(embeddings):
            roots.append(Root(embeddings, "embedding"))
        return roots
    roots = [Root(path, None)]
    if is_models_folder(path):
        for name, role in STANDARD_SUBFOLDERS.items():
            sub = os.path.join(path, name)
            if os.path.isdir(sub):
                roots.append(Root(sub, role))
    return roots
