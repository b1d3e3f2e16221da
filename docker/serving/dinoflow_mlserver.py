"""The MLServer runtime KServe runs for the registered dinoflow embedding model (serving image only:
docker/Dockerfile.serving, k8s/serving/serving-runtime.yaml).

MLServer's own MLflow runtime, with two changes. The request is checked before anything is
decoded: one 1-d BYTES input (base64 PNG/JPEG text, the model's serving example) of at most
MAX_BATCH images; and the model's input errors (it raises MLflow's INVALID_PARAMETER_VALUE, or a
ValueError, naming the problem: not base64, not an image, over a cost bound) are answered 400 with
that message. MLServer answers any other exception 500, so without this a client's bad image
looked like a server fault.
"""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver_mlflow import MLflowRuntime

MAX_BATCH = 256  # images per request: bounds the memory a single request can take


def check_request(payload: InferenceRequest) -> None:
    """Raise InferenceError (HTTP 400) unless the request is one 1-d BYTES batch of <= MAX_BATCH."""
    if len(payload.inputs) != 1:
        raise InferenceError(f"send exactly one input (a batch of base64 images), got {len(payload.inputs)}")
    (inp,) = payload.inputs
    if inp.datatype != "BYTES":
        raise InferenceError(f"input {inp.name!r} must be BYTES (base64 PNG/JPEG text), got {inp.datatype}")
    if len(inp.shape) != 1 or not 1 <= inp.shape[0] <= MAX_BATCH:
        raise InferenceError(f"input {inp.name!r} must have shape [N] with 1 <= N <= {MAX_BATCH}, got {inp.shape}")


class EmbeddingRuntime(MLflowRuntime):
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        check_request(payload)
        try:
            return await super().predict(payload)
        except ValueError as e:  # the model's way of naming bad input
            raise InferenceError(f"bad input: {e}") from None
        except MlflowException as e:
            if e.error_code != "INVALID_PARAMETER_VALUE":
                raise
            raise InferenceError(f"bad input: {e.message}") from None
