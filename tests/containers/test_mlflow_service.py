"""The MLflow server as k8s/ deploys it: the real CPU image, the Deployment's exact command and
environment, uid 10001, read-only root filesystem, tmpfs /tmp, PostgreSQL backend, S3 artifacts
(moto in MinIO's place) — reached by its in-cluster DNS name, with authentication."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.containers]

CLIENT = """
import json, os, urllib.error, urllib.request, base64
uri = os.environ["MLFLOW_TRACKING_URI"]
def call(path, user=None, password=None, host=None, body=None):
    req = urllib.request.Request(uri + path, data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json"})
    if user:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    if host:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read().decode()[:300]
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()[:300]
user, pw = os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
search = "/api/2.0/mlflow/experiments/search?max_results=5"
print(json.dumps({
    "health": call("/health")[0],
    "anonymous": call(search)[0],
    "wrong_password": call(search, user, pw + "x")[0],
    "authenticated": call(search, user, pw)[0],
    "foreign_host": call(search, user, pw, host="evil.example:5000")[0],
}))
"""


def test_server_runs_restricted_and_answers_only_authenticated_clients_by_service_name(cluster):
    code, out = cluster.python(CLIENT, env=cluster.step_env())
    assert code == 0, out[-3000:]
    got = json.loads(out.strip().splitlines()[-1])
    assert got == {"health": 200, "anonymous": 401, "wrong_password": 401, "authenticated": 200, "foreign_host": 403}


def test_a_tracked_run_stores_params_in_postgres_and_artifacts_in_s3(cluster):
    """A client with the pipeline's credentials logs a run and an artifact through the server (which
    alone holds the S3 credentials); an unauthenticated client gets dinoflow's named error."""
    code, out = cluster.python(
        """
import json, mlflow, os, tempfile
mlflow.set_experiment("container-tier")
with mlflow.start_run() as run:
    mlflow.log_param("p", 1)
    mlflow.log_param("note", "max |ONNX \\u2212 PyTorch| \\u2264 1e-5")  # non-ASCII, as model cards and gate notes are
    path = os.path.join(tempfile.mkdtemp(), "note.txt"); open(path, "w").write("hello")
    mlflow.log_artifact(path)
client = mlflow.MlflowClient()
params = client.get_run(run.info.run_id).data.params
print(json.dumps({"param": params["p"], "note": params["note"],
                  "artifacts": [a.path for a in client.list_artifacts(run.info.run_id)],
                  "artifact_uri": run.info.artifact_uri}))
""",
        env={k: v for k, v in cluster.step_env().items() if not k.startswith("AWS_")},
    )
    assert code == 0, out[-3000:]
    got = json.loads(out.strip().splitlines()[-1])
    assert got["note"] == "max |ONNX \u2212 PyTorch| \u2264 1e-5"
    assert (
        got["param"] == "1" and got["artifacts"] == ["note.txt"] and got["artifact_uri"].startswith("mlflow-artifacts:")
    )
    anonymous = {
        k: v for k, v in cluster.step_env().items() if not k.startswith("MLFLOW_TRACKING_") or k.endswith("URI")
    }
    code, out = cluster.python(
        """
from dinoflow import tracking
from dinoflow.config import load_config
with tracking.stage_run("curate", load_config(None, ["tracking.system_metrics=false"])):
    pass
""",
        env=anonymous,
    )
    assert code != 0 and "refused the request (HTTP 401)" in out and "MLFLOW_TRACKING_USERNAME" in out


def test_champion_lookup_of_a_model_not_registered_yet_is_none_on_the_authenticated_server(cluster):
    """MLflow's basic-auth app answers 403 (not 404) for an alias of a model that does not exist:
    the first registration must read that as "no champion", while the lookup of a model that exists
    without the alias still answers plainly."""
    code, out = cluster.python(
        """
import json, uuid, mlflow
from dinoflow.registry.lineage import current_champion
client, name = mlflow.MlflowClient(), "tier-" + uuid.uuid4().hex[:8]
missing = current_champion(client, name, "champion")
client.create_registered_model(name)
no_alias = current_champion(client, name, "champion")
print(json.dumps({"missing": missing, "no_alias": no_alias}))
""",
        env=cluster.step_env(),
    )
    assert code == 0, out[-3000:]
    assert json.loads(out.strip().splitlines()[-1]) == {"missing": None, "no_alias": None}
