"""The container tier's fixtures: real images built from docker/, and the cluster's services started
from the manifests in one pod-like network namespace (see engine.py).

Everything here skips, with the reason, where no Docker engine runs (a developer laptop without
one); CI installs docker.io and debootstrap and starts dockerd (.ci/run), so the tier runs there.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from containers.cluster import SERVICES_NAMESPACE, Manifests
from containers.engine import (
    BASE_IMAGE,
    SERVICES_IMAGE,
    Pod,
    build,
    build_base_image,
    docker_client,
    image_exists,
    project_context,
    scratch_dir,
)
from containers.steps import ROOT
from dinoflow.launch import images

CPU_IMAGE = images.CPU_IMAGE  # the tag components/images.py and k8s/ name
# The CUDA training image cannot be built here (no GPU, no CUDA wheels): the CPU image, built from
# docker/Dockerfile.cpu, runs the training steps under the training image's name.
TRAIN_IMAGE = images.TRAIN_IMAGE
MLFLOW_HOST = f"dinoflow-mlflow.{SERVICES_NAMESPACE}.svc.cluster.local"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test shows the services' logs: a server error (HTTP 500) is only explained there."""
    outcome = yield
    report = outcome.get_result()
    cluster = getattr(item, "funcargs", {}).get("cluster")
    if report.when == "call" and report.failed and cluster is not None:
        report.sections.append(("services' logs (last lines of each)", cluster.pod.logs()))


@pytest.fixture(scope="session")
def docker_engine() -> Any:
    client, why = docker_client()
    if client is None:
        pytest.skip(f"container tier: {why}")
    return client


@pytest.fixture(scope="session")
def images(docker_engine, tmp_path_factory) -> dict[str, str]:
    """Build the base stand-in (if missing), the project's CPU image and the services stand-in."""
    work = tmp_path_factory.mktemp("images")
    why = build_base_image(docker_engine, work)
    if why:
        pytest.skip(f"container tier: {why}")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
    build(
        docker_engine,
        project_context(work),
        "docker/Dockerfile.cpu",
        [CPU_IMAGE, TRAIN_IMAGE],
        {"BASE_IMAGE": BASE_IMAGE, "TORCH_INDEX_URL": "", "GIT_COMMIT": commit},
    )
    if not image_exists(docker_engine, SERVICES_IMAGE):
        from importlib.metadata import version

        build(
            docker_engine,
            Path(__file__).parent,
            "services.Dockerfile",
            [SERVICES_IMAGE],
            {"BASE_IMAGE": BASE_IMAGE, "MOTO_VERSION": version("moto")},
        )
    return {"cpu": CPU_IMAGE, "train": TRAIN_IMAGE, "services": SERVICES_IMAGE}


@pytest.fixture
def scratch() -> Iterator[Callable[[str], Path]]:
    """`scratch(prefix)`: a host directory the steps' uid 10001 can write (pytest's own tmp_path is
    private to root), removed after the test with whatever the containers left in it."""
    made: list[Path] = []

    def make(prefix: str) -> Path:
        made.append(scratch_dir(prefix))
        return made[-1]

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """The demo pool, built on the host and mounted read-only into the steps."""
    from dinoflow.config import load_config
    from dinoflow.stages import run_stage

    out = tmp_path_factory.mktemp("demo") / "demo"
    run_stage("demo-data", load_config(ROOT / "params.yaml", [f"demo.out_dir={out}", "tracking.enabled=false"]))
    return out


@pytest.fixture(scope="session")
def manifests() -> Manifests:
    return Manifests.build()


# UTF8 as the official postgres image initialises it (LANG=en_US.utf8): under the stand-in's C
# locale initdb would pick SQL_ASCII, and psycopg2 then cannot store a non-ASCII value (HTTP 500).
PG_START = """set -eu
printf '%s' "$POSTGRES_PASSWORD" > /tmp/pw
initdb -D /tmp/pg -U "$POSTGRES_USER" --pwfile=/tmp/pw -A scram-sha-256 -E UTF8 --no-locale >/dev/null
rm /tmp/pw
postgres -D /tmp/pg -k /tmp -c listen_addresses=127.0.0.1 -p 5432 &
until pg_isready -q -h 127.0.0.1 -p 5432; do sleep 0.3; done
PGPASSWORD="$POSTGRES_PASSWORD" createdb -h 127.0.0.1 -U "$POSTGRES_USER" "$POSTGRES_DB" 2>/dev/null || true
echo ready
wait
"""


@dataclass
class Cluster:
    pod: Pod
    manifests: Manifests
    images: dict[str, str]
    mlflow_uri: str

    def step_env(self, **extra: str) -> dict[str, str]:
        """What a pipeline step's container gets from the dinoflow-s3 / dinoflow-mlflow secrets."""
        return {**self.manifests.secret("dinoflow-s3"), **self.manifests.secret("dinoflow-mlflow"), **extra}

    def python(self, code: str, env: dict[str, str] | None = None, timeout: float = 600) -> tuple[int, str]:
        """Run Python in the project image inside the pod, as a restricted step would."""
        return self.pod.run(self.images["cpu"], ["python", "-c", code], environment=env, timeout=timeout)


CREATE_USER = """
import base64, json, os, urllib.request
body = json.dumps({"username": os.environ["MLFLOW_TRACKING_USERNAME"], "password": os.environ["MLFLOW_TRACKING_PASSWORD"]})
req = urllib.request.Request(os.environ["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/users/create", data=body.encode(),
                             headers={"Content-Type": "application/json"})
admin = os.environ["ADMIN_USER"] + ":" + os.environ["ADMIN_PASSWORD"]
req.add_header("Authorization", "Basic " + base64.b64encode(admin.encode()).decode())
print(urllib.request.urlopen(req, timeout=30).status)
"""


def _create_pipeline_user(pod: Pod, m: Manifests, image: str) -> None:
    """docs/kubeflow.md's deployment step 2: the admin creates the MLflow user named in dinoflow-mlflow."""
    server = m.secret("dinoflow-mlflow-server", SERVICES_NAMESPACE)
    env = {
        **m.secret("dinoflow-mlflow"),
        "ADMIN_USER": server["MLFLOW_AUTH_ADMIN_USERNAME"],
        "ADMIN_PASSWORD": server["MLFLOW_AUTH_ADMIN_PASSWORD"],
    }
    code, out = pod.run(image, ["python", "-c", CREATE_USER], environment=env, timeout=120)
    assert code == 0, f"creating the pipeline's MLflow user failed:\n{out[-2000:]}"


def _start_mlflow(pod: Pod, m: Manifests, image: str) -> None:
    """The MLflow Deployment's init containers, then its server, with exactly their specs."""
    spec = m.one("Deployment", "dinoflow-mlflow")["spec"]["template"]["spec"]
    for init in spec.get("initContainers", []):
        code, out = pod.run(
            image,
            init.get("args"),
            entrypoint=init.get("command"),
            environment=m.container_env(init, SERVICES_NAMESPACE),
            timeout=300,
        )
        assert code == 0, f"init container {init['name']} failed:\n{out[-3000:]}"
    (server,) = [c for c in spec["containers"] if c["name"] == "mlflow"]
    pod.start(
        "mlflow",
        image,
        server.get("args"),
        entrypoint=server.get("command"),
        environment=m.container_env(server, SERVICES_NAMESPACE),
    )


@pytest.fixture(scope="session")
def cluster(images, manifests, docker_engine) -> Iterator[Cluster]:
    pod = Pod(docker_engine, manifests.service_hostnames())
    try:
        pg = manifests.secret("dinoflow-postgres", SERVICES_NAMESPACE)
        pod.start("postgres", images["services"], ["sh", "-c", PG_START], environment=pg, user="postgres")
        pod.start("s3", images["services"], ["moto_server", "-H", "127.0.0.1", "-p", "9000"])
        _start_mlflow(pod, manifests, images["cpu"])
        uri = f"http://{MLFLOW_HOST}:5000"
        pod.wait_healthy(images["cpu"], f"{uri}/health", timeout=240)
        _create_pipeline_user(pod, manifests, images["cpu"])
        yield Cluster(pod, manifests, images, uri)
    except Exception:
        print(pod.logs())
        raise
    finally:
        pod.close()
