"""Signed webhooks (Standard Webhooks 1.0): endpoints, a durable outbox, delivery."""
