"""The node agent's engine, shared by its two faces: `modelsync node` and the Forge/A1111 extension."""
