"""Run by Forge/A1111 at every start: install only what the host lacks, through the host's own pip."""
import launch

# import name -> pip requirement; the host's pinned packages (gradio, fastapi, pydantic, torch,
# safetensors) are never listed here.
REQUIREMENTS = {
    "sqlite_utils": "sqlite-utils>=4",
    "tqdm": "tqdm",
    "gguf": "gguf",
    "watchfiles": "watchfiles>=0.21",  # re-scans soon after model files change (the node agent's watcher)
}

for module_name, requirement in REQUIREMENTS.items():
    if not launch.is_installed(module_name):
        launch.run_pip(f"install \"{requirement}\"", f"modelsync requirement: {requirement}")
