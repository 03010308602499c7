"""Jobs: what a generation job needs (its models, read from the payload and infotext) and resolving that against the registry."""
