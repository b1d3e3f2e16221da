"""Embeddings for consumers of the registry: the computation the served model and `dinoflow embed`
share (`compute`), the `dinoflow embed` job (`job`, `parts`, `cli`) and the ONNX export (`onnx_export`).

Submodules are imported where used: the registered model imports `compute` and `limits` (the bounds
on one image and one request) alone and must stay light (torch, numpy, Pillow, PyYAML, pydantic),
without pyarrow, tqdm or boto3. `output` keeps one writer per `dinoflow embed` output.
"""
