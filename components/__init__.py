"""Kubeflow Pipelines components, one folder per stage (`components/<stage>/component.py`).

Each is a lightweight Python component on the project image: its body imports `dinoflow` and
runs the stage function through `dinoflow.launch` (config = params text + overrides + the
paths of its artifacts). The components hold wiring only, no logic.
"""
