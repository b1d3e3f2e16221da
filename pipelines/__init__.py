"""Kubeflow Pipelines definitions (`pipelines/dinov2_pipeline.py`); compiled and sent by `dinoflow pipeline`."""
