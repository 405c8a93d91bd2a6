"""Kairos serving: BentoML service, real-time engine, segment rules and send policy."""
