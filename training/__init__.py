"""Kairos training: sequence model, baselines, evaluation, tuning and the MLflow registry."""
