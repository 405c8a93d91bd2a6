"""Kairos features: event contract, ingest, event store, identity, profiles and sequences."""
