"""Civitai: the API client (lookups by hash, previews), downloads of model files, and update checks."""
