"""Standard Webhooks 1.0: secrets and signatures (framework-free)."""
