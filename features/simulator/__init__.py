"""The Kairos world simulator; the public entry point is ``features.simulate``."""
