"""The curation fan-out components: specs (types, image, wiring only, no run-unique input) and the
curate-only pipeline's shape."""

from __future__ import annotations

from components.curate_global.component import curate_global
from components.curate_partition.component import curate_partition
from components.curate_plan.component import curate_plan
from components.images import CPU_IMAGE


def _io(comp):
    spec = comp.component_spec
    return (
        spec,
        {k: v.type.split("@")[0] for k, v in (spec.inputs or {}).items()},
        {k: v.type.split("@")[0] for k, v in (spec.outputs or {}).items()},
    )


def test_fanout_component_specs():
    spec, ins, outs = _io(curate_plan)
    assert spec.implementation.container.image == CPU_IMAGE
    assert ins == {
        "params_yaml": "String",
        "overrides": "typing.List[str]",
        "max_groups": "Integer",
        "data_version": "String",  # the pool listing's digest: a changed pool misses the cache
    }
    assert outs == {"Output": "typing.List[int]"}
    spec, ins, outs = _io(curate_partition)
    assert spec.implementation.container.image == CPU_IMAGE  # no GPU in a fan-out task
    assert ins["group"] == ins["groups"] == "Integer" and outs == {"embeddings": "system.Artifact"}
    spec, ins, outs = _io(curate_global)
    assert spec.implementation.container.image == CPU_IMAGE and ins["data_version"] == "String"
    assert spec.inputs["embeddings"].is_artifact_list and ins["embeddings"] == "system.Artifact"
    assert outs == {
        "curated": "system.Dataset",
        "reports": "system.Artifact",
        "report_html": "system.HTML",
        "metrics": "system.Metrics",
    }
    assert ins["launch"] == "Dict"  # the global step's processes and TrainJob placement (dinoflow.launch.options)
    # the run id comes from the pod's label and the shared volume from the DAG's mount: a run-unique
    # input would enter KFP's cache key (never a hit)
    for comp in (curate_plan, curate_partition, curate_global):
        assert not {p for p in comp.component_spec.inputs if ("run" in p and "id" in p) or p == "shared_dir"}
    for comp in (curate_plan, curate_partition, curate_global):  # bodies wire, dinoflow does the work
        container = comp.component_spec.implementation.container
        body = " ".join(container.args) + " ".join(container.command)
        assert "pip install" not in body and "dinoflow.launch.curation_fanout" in body


def test_fanout_subpipeline_compiles_with_a_parallel_for_and_outputs():
    import tempfile
    from pathlib import Path

    import yaml
    from kfp import compiler

    from pipelines.curation_fanout import curation_fanout

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fanout.yaml"
        compiler.Compiler().compile(curation_fanout, str(path))
        spec, platform = yaml.safe_load_all(path.read_text())
    tasks = spec["root"]["dag"]["tasks"]
    loop = next(t for name, t in tasks.items() if name.startswith("for-loop"))
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("curate-plan-Output")
    assert set(spec["root"]["outputDefinitions"]["artifacts"]) == {"curated", "reports", "report_html", "metrics"}
    # built by the same function as the main DAG's curation: the same cluster settings on every task
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    steps = {"exec-data-version", "exec-curate-plan", "exec-curate-partition", "exec-curate-global"}
    assert set(executors) == steps | {"exec-launch-options"}
    for label, ex in executors.items():
        assert ex["securityContext"]["runAsNonRoot"] is True
        if label in steps:
            assert ex["fieldPathAsEnv"][0]["name"] == "DINOFLOW_PIPELINE_RUN_ID" and ex["pvcMount"]
        else:  # the launch check reads no data: no volume, no credentials
            assert set(ex) == {"securityContext"}
    glob = tasks["curate-global"]["inputs"]["parameters"]["launch"]["taskOutputParameter"]
    assert glob == {"outputParameterKey": "Output", "producerTask": "launch-options"}
