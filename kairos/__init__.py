"""Kairos command line and workspace: the glue that runs every pipeline stage."""

__version__ = "0.1.0"
