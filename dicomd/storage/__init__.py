"""Durable storage: the hashed file store, dataset header parsing and the instance index."""
