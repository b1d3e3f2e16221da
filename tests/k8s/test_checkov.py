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


def scan(manifest: Path) -> dict:
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}  # no download of check guidelines (no network needed)
    out = subprocess.run(
        [checkov(), "-f", str(manifest), "--framework", "kubernetes", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=manifest.parent,
    )
    assert out.returncode in (0, 1), f"checkov crashed: {out.stderr[-2000:]}"
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, dict]:
    out = {}
    for overlay in OVERLAYS:
        path = tmp_path_factory.mktemp(overlay) / f"{overlay}.yaml"
        path.write_text(build_text(K8S / "overlays" / overlay))
        out[overlay] = scan(path)
    return out


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_checkov_passes_except_the_accepted_checks(reports, overlay):
    report = reports[overlay]
    results = report["results"]
    failed = sorted({(c["check_id"], c["resource"]) for c in results["failed_checks"]})
    assert [f for f in failed if f[0] not in ACCEPTED] == [], overlay
    assert report["summary"]["parsing_errors"] == 0 and report["summary"]["passed"] > 100
    for skipped in results["skipped_checks"]:  # every skip says why, in the manifest
        assert len(skipped["check_result"].get("suppress_comment", "")) > 30, skipped["check_id"]


def test_checkov_catches_a_privileged_container(tmp_path):
    """The scanner really looks: a privileged, root, writable container fails it."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: bad}\nspec:\n  containers:\n"
        "    - name: c\n      image: busybox:1.36\n      securityContext: {privileged: true, runAsUser: 0}\n"
    )
    failed = {c["check_id"] for c in scan(bad)["results"]["failed_checks"]}
    assert {"CKV_K8S_16", "CKV_K8S_23", "CKV_K8S_22"} <= failed
