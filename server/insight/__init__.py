"""Fleet insight: what each node is doing, job demand over time, recommendations."""
