"""Segment rules layer: segments defined as YAML data, evaluated in batch and in real time.

- ``schema``       the versioned YAML schema (pydantic models, JSON Schema)
- ``library``      ``load_library``: validate a file, report problems by YAML path, compile it
- ``ir``           the compiled form both evaluators share
- ``batch``        ``evaluate_batch``: every profile at a cutoff, compiled to DuckDB SQL
- ``incremental``  ``SegmentEngine``: one profile at a time as events arrive and time passes
- ``explain``      which conditions held or failed for a profile, with the deciding values

``default.yaml`` is the shipped default library; ``docs/segments.md`` documents all of it.
"""
