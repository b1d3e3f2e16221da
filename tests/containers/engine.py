"""Docker for the container tier: find the engine, build the images for real, and run containers
the way a Kubernetes pod runs them.

No Kubernetes API server can run on these machines, but a container runtime can. The tier runs
every container in ONE network namespace (`Pod`): a holder container with only a loopback
interface, whose /etc/hosts maps the services' in-cluster DNS names to 127.0.0.1, so clients
address services exactly as in the cluster (`dinoflow-mlflow.dinoflow.svc.cluster.local:5000`),
on the manifests' own ports, and no traffic leaves that namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "dinoflow-test/python:3.11-bookworm"  # a stand-in for python:3.11-slim-bookworm
SERVICES_IMAGE = "dinoflow-test/services:1"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
SOCKETS = ("/var/run/docker.sock", "/run/dinoflow-docker/docker.sock")


def docker_client() -> tuple[Any, str]:
    """(client, "") for a working Docker engine, or (None, why not)."""
    try:
        import docker
    except ImportError:
        return None, "the `docker` Python package is missing"
    hosts = [os.environ["DOCKER_HOST"]] if os.environ.get("DOCKER_HOST") else [f"unix://{s}" for s in SOCKETS]
    problems = []
    for host in hosts:
        try:
            client = docker.DockerClient(base_url=host, timeout=600)
            client.ping()
            return client, ""
        except Exception as e:  # noqa: BLE001 - any failure means "no engine here"
            problems.append(f"{host}: {type(e).__name__}")
    return None, (
        "no Docker engine answers (" + "; ".join(problems) + "). CI installs docker.io and starts dockerd "
        "(.ci/run); on a laptop, start dockerd and set DOCKER_HOST"
    )


def image_exists(client: Any, tag: str) -> bool:
    import docker

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def build_base_image(client: Any, workdir: Path) -> str:
    """`debootstrap` a Debian bookworm with Python 3.11 and import it as BASE_IMAGE ("" or why not).

    No image registry is reachable here. HTTPS leaves through a TLS-intercepting proxy, so the
    stand-in carries this machine's CA bundle and points pip at it (test images only)."""
    if image_exists(client, BASE_IMAGE):
        return ""
    if os.geteuid() != 0 or not shutil.which("debootstrap"):
        return f"{BASE_IMAGE} is missing and building it needs root and debootstrap (CI has both: .ci/run)"
    rootfs = workdir / "rootfs"
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,python3-pip,ca-certificates,tini",
            "bookworm",
            str(rootfs),
            DEBIAN_MIRROR,
        ],
        check=True,
        capture_output=True,
    )
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")
    (rootfs / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
    (rootfs / "usr/local/bin/python").symlink_to("/usr/bin/python3")
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for f in (rootfs / cache).glob("*"):
            if f.is_file():
                f.unlink()
    tar = workdir / "rootfs.tar"
    with tarfile.open(tar, "w") as t:
        t.add(rootfs, arcname=".")
    # the low-level API imports a root filesystem tarball (`docker import`); the high-level
    # ImageCollection has no import
    client.api.import_image(
        src=str(tar),
        repository=BASE_IMAGE.split(":")[0],
        tag=BASE_IMAGE.split(":")[1],
        changes=["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 'CMD ["python3"]'],
    )
    shutil.rmtree(rootfs, ignore_errors=True)
    tar.unlink()
    return ""


def project_context(workdir: Path) -> Path:
    """The build context: the files git tracks or would track (what a clean clone holds), plus the CPU
    torch wheel in docker/wheels/ (PyTorch's index is not reachable from here)."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    ctx = workdir / "context"
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, ctx / rel)
    import torch

    wheels = ctx / "docker" / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), f"torch=={torch.__version__}"],
        check=True,
    )
    return ctx


def build(client: Any, context: Path, dockerfile: str, tags: Iterable[str], buildargs: dict[str, str]) -> None:
    """`docker build` through the engine's API; raises with the build log's tail on failure."""
    import docker

    tags = list(tags)
    try:
        client.images.build(
            path=str(context),
            dockerfile=dockerfile,
            tag=tags[0],
            buildargs=buildargs,
            network_mode="host",
            rm=True,
            forcerm=True,
        )
    except docker.errors.BuildError as e:
        tail = "".join(str(chunk.get("stream", chunk.get("error", ""))) for chunk in e.build_log)[-4000:]
        raise RuntimeError(f"docker build -f {dockerfile} failed:\n{tail}") from None
    image = client.images.get(tags[0])
    for tag in tags[1:]:
        repo, _, version = tag.rpartition(":")
        image.tag(repo, version)


class Pod:
    """Containers sharing one loopback-only network namespace, with in-cluster names on 127.0.0.1."""

    def __init__(self, client: Any, hostnames: Iterable[str]):
        self.client = client
        self.id = uuid.uuid4().hex[:8]
        self.containers: list[Any] = []
        self.holder = client.containers.run(
            BASE_IMAGE,
            ["sleep", "infinity"],
            detach=True,
            name=f"dinoflow-tier-{self.id}",
            network_mode="none",
            extra_hosts={h: "127.0.0.1" for h in hostnames},
            labels={"dinoflow-test": self.id},
        )
        self.containers.append(self.holder)

    @property
    def network_mode(self) -> str:
        return f"container:{self.holder.id}"

    def restricted(self) -> dict[str, Any]:
        """What a restricted pod gets: non-root uid 10001, read-only root, tmpfs /tmp, no capabilities."""
        return dict(
            user="10001:10001",
            read_only=True,
            tmpfs={"/tmp": "size=4g"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            network_mode=self.network_mode,
            labels={"dinoflow-test": self.id},
        )

    def start(
        self,
        name: str,
        image: str,
        command: list[str] | None,
        *,
        entrypoint: list[str] | None = None,
        environment: dict[str, str] | None = None,
        restricted: bool = True,
        **kwargs: Any,
    ) -> Any:
        opts = (
            self.restricted()
            if restricted
            else {"network_mode": self.network_mode, "labels": {"dinoflow-test": self.id}}
        )
        opts.update(kwargs)
        c = self.client.containers.run(
            image,
            command,
            entrypoint=entrypoint,
            environment=environment or {},
            detach=True,
            name=f"dinoflow-tier-{self.id}-{name}",
            **opts,
        )
        self.containers.append(c)
        return c

    def run(
        self,
        image: str,
        command: list[str],
        *,
        environment: dict[str, str] | None = None,
        timeout: float = 600,
        **kwargs: Any,
    ) -> tuple[int, str]:
        """Run a container to completion in the pod; (exit code, output)."""
        c = self.start(f"job-{uuid.uuid4().hex[:6]}", image, command, environment=environment, **kwargs)
        try:
            code = c.wait(timeout=timeout)["StatusCode"]
            return code, c.logs().decode(errors="replace")
        finally:
            c.remove(force=True)
            self.containers.remove(c)

    def wait_healthy(self, image: str, url: str, timeout: float = 180) -> None:
        probe = f"import urllib.request as u; print(u.urlopen({url!r}, timeout=3).status)"
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            code, last = self.run(image, ["python3", "-c", probe], timeout=30)
            if code == 0:
                return
            time.sleep(2)
        raise RuntimeError(f"{url} did not become healthy within {timeout:.0f} s: {last[-1500:]}")

    def logs(self, tail: int = 200) -> str:
        return "\n".join(f"--- {c.name}\n{c.logs(tail=tail).decode(errors='replace')}" for c in self.containers[1:])

    def close(self) -> None:
        for c in reversed(self.containers):
            try:
                c.remove(force=True)
            except Exception:  # noqa: BLE001 - already gone
                pass


def scratch_dir(prefix: str) -> Path:
    """A host directory the pod's uid 10001 can write (bind mounts keep host permissions)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    d.chmod(0o777)
    return d
