"""checkov (the real scanner, from its own venv: .venv-checkov, built by `make test`) on each
rendered overlay: every check passes or is skipped in the manifest with its reason, except the two
the project accepts for all its workloads: CKV_K8S_15 (imagePullPolicy Always: the images are
pinned, so pulling again buys nothing) and CKV_K8S_35 (secrets as environment variables: MLflow,
PostgreSQL and MinIO read their credentials only from the environment).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from k8s_build import K8S, OVERLAYS, ROOT, build_text

ACCEPTED = {"CKV_K8S_15", "CKV_K8S_35"}


def checkov() -> str:
    """The checkov of `make test`'s venv, else one on PATH; a named error when there is none."""
    for candidate in (
        os.environ.get("DINOFLOW_CHECKOV", ""),
        str(ROOT / ".venv-checkov" / "bin" / "checkov"),
        str(Path(sys.executable).parent / "checkov"),
        shutil.which("checkov") or "",
    ):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("checkov is missing: `make .venv-checkov/.installed` (its pins clash with constraints.txt)")


def scan(directory: Path) -> dict:
    """One checkov run over every manifest in `directory` (one start: checkov takes ~20 s to load)."""
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}  # no download of check guidelines (no network needed)
    out = subprocess.run(
        [checkov(), "-d", str(directory), "--framework", "kubernetes", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=directory,
    )
    assert out.returncode in (0, 1), f"checkov crashed: {out.stderr[-2000:]}"
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    directory = tmp_path_factory.mktemp("rendered")
    for overlay in OVERLAYS:
        (directory / f"{overlay}.yaml").write_text(build_text(K8S / "overlays" / overlay))
    return scan(directory)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_checkov_passes_except_the_accepted_checks(report, overlay):
    results = report["results"]
    mine = [c for c in results["passed_checks"] if c["file_path"].endswith(f"{overlay}.yaml")]
    assert len(mine) > 100 and report["summary"]["parsing_errors"] == 0, overlay  # this overlay was scanned
    failed = {
        (c["check_id"], c["resource"]) for c in results["failed_checks"] if c["file_path"].endswith(f"{overlay}.yaml")
    }
    assert sorted(f for f in failed if f[0] not in ACCEPTED) == [], overlay
    for skipped in results["skipped_checks"]:  # every skip says why, in the manifest
        assert len(skipped["check_result"].get("suppress_comment", "")) > 30, skipped["check_id"]


def test_checkov_catches_a_privileged_container(tmp_path):
    """The scanner really looks: a privileged, root, writable container fails it."""
    (tmp_path / "bad.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: bad}\nspec:\n  containers:\n"
        "    - name: c\n      image: busybox:1.36\n      securityContext: {privileged: true, runAsUser: 0}\n"
    )
    failed = {c["check_id"] for c in scan(tmp_path)["results"]["failed_checks"]}
    assert {"CKV_K8S_16", "CKV_K8S_23", "CKV_K8S_22"} <= failed
