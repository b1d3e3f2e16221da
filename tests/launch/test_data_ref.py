"""Large data between steps by reference: written once to the shared volume, the artifact holding
only a reference, read in place, and not copied again for a TrainJob (the stand-in Kubernetes API
of tests/launch/standin_k8s.py plays the cluster: no API server can run here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import standin_k8s
import yaml

from dinoflow.config.pipeline_env import KFP_POD_NAME, KFP_POD_UID, PIPELINE_RUN_ID
from dinoflow.errors import DinoflowError
from dinoflow.launch.data_ref import REF_FILE, on_volume, output_dir, publish_ref, resolve
from dinoflow.launch.options import LaunchOptions
from dinoflow.launch.training import run_training_step


@pytest.fixture
def volume(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv(PIPELINE_RUN_ID, "run-9")
    return shared


def test_without_the_volume_the_data_stays_in_the_artifact(tmp_path, monkeypatch):
    monkeypatch.delenv(PIPELINE_RUN_ID, raising=False)
    art = tmp_path / "artifact"
    assert output_dir(art, "curated", tmp_path / "no-volume") == art
    publish_ref(art, art)
    assert not (art / REF_FILE).exists() and resolve(art) == str(art)


def test_the_artifact_refers_to_the_data_on_the_volume(tmp_path, volume):
    art = tmp_path / "artifact"
    out = output_dir(art, "curated", volume)
    assert out == volume / "data" / "run-9" / "curated" and out.is_dir()
    (out / "shard-000000.tar").write_bytes(b"x" * 1000)
    publish_ref(art, out)
    assert [p.name for p in art.iterdir()] == [REF_FILE]  # the artifact holds no data
    assert json.loads((art / REF_FILE).read_text()) == {"path": str(out)}
    assert resolve(art) == str(out) and on_volume(resolve(art), volume)
    # a retried attempt starts the directory afresh: no half-written file of the failed one survives
    assert list(output_dir(art, "curated", volume).iterdir()) == []


def test_a_reference_to_removed_data_is_named(tmp_path, volume):
    art = tmp_path / "artifact"
    out = output_dir(art, "curated", volume)
    publish_ref(art, out)
    out.rmdir()
    with pytest.raises(DinoflowError, match="gone from the shared volume"):
        resolve(art)


def test_a_trainjob_reads_data_on_the_volume_in_place(tmp_path, volume, monkeypatch):
    monkeypatch.setenv(KFP_POD_NAME, "run-9-pretrain")
    monkeypatch.setenv(KFP_POD_UID, "uid-9")
    curated = output_dir(tmp_path / "curated-artifact", "curated", volume)
    (curated / "shard-000000.tar").write_bytes(b"shard")
    cluster, server = standin_k8s.start()
    read = {}

    def trainer(job):
        cmd = job["spec"]["trainer"]["command"]
        cfg = yaml.safe_load(Path(cmd[cmd.index("-c") + 1]).read_text())
        read["data"] = cfg["pretrain"]["data"]
        out = Path(cfg["pretrain"]["out_dir"])
        out.mkdir(parents=True)
        (out / "backbone.pth").write_bytes(b"w")
        Path(cfg["pretrain"]["report_csv"]).write_text("step,loss\n")

    cluster.on_complete = trainer
    try:
        run_training_step(
            "pretrain",
            "",
            [],
            inputs={"pretrain.data": str(curated)},
            outputs={"pretrain.out_dir": str(tmp_path / "teacher"), "pretrain.report_csv": str(tmp_path / "c.csv")},
            opts=LaunchOptions(
                num_nodes=2,
                gpus_per_node=1,
                image="img:1",
                namespace="kubeflow",
                shared_dir=str(volume),
                k8s_host=cluster.host,
                poll_s=0.0,
                stream_logs=False,
            ),
        )
    finally:
        server.shutdown()
        server.server_close()
    assert read["data"] == str(curated)  # read where it lies, no staging copy
    assert not (volume / "run-9" / "pretrain" / "in").exists()
