"""Per-component tests: the component spec (types, image, no runtime pip) and its wiring.

The wiring tests call each component's Python function in this process with real KFP artifact
objects whose paths point into tmp_path, and stand-in stages (tests/components/standin_stages.py)
that record the config they receive.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kfp import dsl

from components.curate_global.component import curate_global
from components.curate_partition.component import curate_partition
from components.curate_plan.component import curate_plan
from components.distill.component import distill
from components.evaluate.component import evaluate
from components.images import CPU_IMAGE, TRAIN_IMAGE
from components.launch_options.component import launch_options
from components.pretrain.component import pretrain
from components.register.component import register
from dinoflow.errors import DinoflowError
from dinoflow.launch.options import LaunchOptions

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def _art(cls, path: Path):
    a = cls(name=path.name, uri=str(path))
    a.path = str(path)  # kfp.local/cluster map the uri to a local path; here they are the same
    return a


def _spec(comp):
    return comp.component_spec


@pytest.mark.parametrize(
    "comp,image,inputs,outputs",
    [
        (
            curate_global,
            CPU_IMAGE,  # a TrainJob of the global step gets the training image through `image`
            {"embeddings": "system.Artifact"},
            {
                "curated": "system.Dataset",
                "reports": "system.Artifact",
                "report_html": "system.HTML",
                "metrics": "system.Metrics",
            },
        ),
        (
            pretrain,
            TRAIN_IMAGE,
            {"curated": "system.Dataset"},
            {"teacher": "system.Model", "curves": "system.Artifact"},
        ),
        (
            distill,
            TRAIN_IMAGE,
            {"curated": "system.Dataset", "teacher": "system.Model"},
            {"student": "system.Model", "curves": "system.Artifact"},
        ),
        (
            evaluate,
            CPU_IMAGE,
            {"teacher": "system.Model", "student": "system.Model"},
            {"reports": "system.Artifact", "report_md": "system.Markdown", "metrics": "system.Metrics"},
        ),
        (
            register,
            CPU_IMAGE,
            {"student": "system.Model", "eval_reports": "system.Artifact"},
            {"registry": "system.Artifact"},
        ),
    ],
    ids=["curate_global", "pretrain", "distill", "evaluate", "register"],
)
def test_component_spec(comp, image, inputs, outputs):
    spec = _spec(comp)
    container = spec.implementation.container
    assert container.image == image
    # the image carries kfp and dinoflow: no pip install at run time (offline clusters, kfp.local)
    assert "pip install" not in " ".join(container.command)
    assert {"params_yaml", "overrides"} <= set(spec.inputs)
    for name, schema in inputs.items():
        assert spec.inputs[name].type.split("@")[0] == schema, name
    for name, schema in outputs.items():
        assert spec.outputs[name].type.split("@")[0] == schema, name
    _check_program(comp, container)


def _check_program(comp, container) -> None:
    """The program the container runs: KFP's preamble (kfp and typing imports) and exactly this
    component's function, which the executor is told to call; the function imports only the
    standard library and dinoflow (the image's packages, nothing installed at run time), and
    every name it imports exists in this environment (a renamed dinoflow function fails here,
    not in a pod)."""
    import ast
    import importlib
    import sys

    tree = ast.parse(container.command[-1])
    fn_name = container.args[container.args.index("--function_to_execute") + 1]
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert [d.name for d in defs] == [fn_name] == [comp.python_func.__name__]
    params = [a.arg for a in defs[0].args.args]
    assert params == list(comp.python_func.__code__.co_varnames[: comp.python_func.__code__.co_argcount])
    preamble = {
        n.module if isinstance(n, ast.ImportFrom) else a.name
        for n in tree.body
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in n.names
    }
    assert preamble == {"kfp", "kfp.dsl", "typing"}
    imports = [(n.module, a.name) for n in ast.walk(defs[0]) if isinstance(n, ast.ImportFrom) for a in n.names]
    imports += [(a.name, None) for n in ast.walk(defs[0]) if isinstance(n, ast.Import) for a in n.names]
    assert any(m.startswith("dinoflow.") for m, _ in imports), "the component delegates to dinoflow"
    for module, name in imports:
        assert module.split(".")[0] == "dinoflow" or module.split(".")[0] in sys.stdlib_module_names, module
        if name is not None:
            assert hasattr(importlib.import_module(module), name), f"{module}.{name}"


def test_launched_components_take_one_launch_dict_but_no_run_id():
    """Resources arrive as one `launch` struct (dinoflow.launch.options); the run id is not an
    input: a run-unique input would enter KFP's cache key (never a hit)."""
    for comp in (pretrain, distill, curate_global):
        inputs = _spec(comp).inputs
        assert inputs["launch"].type == "Dict", comp.name  # IR: STRUCT
        assert not {"num_nodes", "gpus_per_node", "procs_per_node", "tolerations", "shared_dir"} & set(inputs)
        assert not {p for p in inputs if "run" in p and "id" in p}


def test_launch_options_builds_the_checked_dict():
    spec = _spec(launch_options)
    assert spec.implementation.container.image == CPU_IMAGE and spec.outputs["Output"].type == "Dict"
    _check_program(launch_options, spec.implementation.container)
    flat = dict(
        num_nodes=2,
        gpus_per_node=8,
        accelerator_type="nvidia.com/gpu",
        image="img:1",
        trainjob_runtime="rt",
        trainjob_runtime_kind="ClusterTrainingRuntime",
        tolerations=[{"key": "gpu", "operator": "Exists"}],
        node_selector={"pool": "a100"},
    )
    launch = launch_options.python_func(**flat)
    assert {k: launch[k] for k in flat} == flat and launch["shared_dir"] == "/mnt/dinoflow-shared"
    opts = LaunchOptions.from_launch(launch)  # what the launched step makes of it
    assert (opts.num_nodes, opts.gpus_per_node, opts.runtime_kind, opts.node_selector) == (
        2,
        8,
        "ClusterTrainingRuntime",
        {"pool": "a100"},
    )
    with pytest.raises(DinoflowError, match=r"launch.num_nodes: Input should be greater than or equal to 1; got 0"):
        launch_options.python_func(**{**flat, "num_nodes": 0})
    with pytest.raises(DinoflowError, match=r"launch.tolerations.0: Input should be a valid dictionary"):
        launch_options.python_func(**{**flat, "tolerations": ["gpu"]})


CURATE_LAUNCH = dict(
    data_version="sha256:0",
    launch={"num_nodes": 1, "gpus_per_node": 1, "image": "img", "trainjob_runtime": "rt"},
)


def _curate(tmp_path: Path, text: str, overrides: list[str], embeddings: list) -> tuple:
    """Run curate_global's body on `embeddings`; returns its (curated, reports, html, metrics) artifacts."""
    curated, reports = _art(dsl.Dataset, tmp_path / "curated"), _art(dsl.Artifact, tmp_path / "cur_reports")
    html, metrics = _art(dsl.HTML, tmp_path / "curation.html"), dsl.Metrics(name="m", uri=str(tmp_path / "m"))
    curate_global.python_func(
        params_yaml=text,
        overrides=overrides,
        embeddings=embeddings,
        curated=curated,
        reports=reports,
        report_html=html,
        metrics=metrics,
        **CURATE_LAUNCH,
    )
    return curated, reports, html, metrics


def test_components_wire_artifacts_through_the_stages(standin_stages, tmp_path, capsys):
    text = PARAMS.read_text()
    groups = curate_plan.python_func(
        params_yaml=text, overrides=["curate.seed=3"], max_groups=2, data_version="sha256:0"
    )
    assert groups == [0, 1]  # the stand-in pool has 3 partitions: two tasks of at most 2
    embeddings = [_art(dsl.Artifact, tmp_path / f"embeddings-{g}") for g in groups]
    for g, emb in zip(groups, embeddings):
        curate_partition.python_func(
            params_yaml=text, overrides=[], group=g, groups=2, data_version="sha256:0", embeddings=emb
        )
    log = standin_stages()
    assert log["embed-0"]["work_dir"] == embeddings[0].path and log["embed-0"]["partitions"] == [0, 2]
    assert log["embed-1"]["partitions"] == [1]
    curated, reports, html, metrics = _curate(tmp_path, text, ["curate.seed=3"], embeddings)
    log = standin_stages()
    assert log["curate"]["out_dir"] == curated.path and log["curate"]["report_dir"] == reports.path
    assert log["curate"]["parts"] == ["pool-00000.npy", "pool-00001.npy", "pool-00002.npy"]  # every task's shards
    assert Path(html.path).read_text() == "<html>funnel</html>"
    assert metrics.metadata == {"funnel.input": 5.0, "funnel.kept": 3.0}

    teacher, tcurves = _art(dsl.Model, tmp_path / "teacher"), _art(dsl.Artifact, tmp_path / "pretrain.csv")
    launch = dict(launch={"num_nodes": 1, "gpus_per_node": 0, "image": "img", "shared_dir": str(tmp_path / "shared")})
    pretrain.python_func(params_yaml=text, overrides=[], curated=curated, teacher=teacher, curves=tcurves, **launch)
    log = standin_stages()
    assert log["pretrain"]["data"] == curated.path and log["pretrain"]["out_dir"] == teacher.path
    assert Path(tcurves.path).read_text().startswith("step,loss")

    student, scurves = _art(dsl.Model, tmp_path / "student"), _art(dsl.Artifact, tmp_path / "distill.csv")
    distill.python_func(
        params_yaml=text, overrides=[], curated=curated, teacher=teacher, student=student, curves=scurves, **launch
    )
    assert standin_stages()["distill"]["teacher"] == teacher.path
    assert (Path(student.path) / "backbone.pth").exists()

    ev_reports, md = _art(dsl.Artifact, tmp_path / "eval"), _art(dsl.Markdown, tmp_path / "eval.md")
    ev_metrics = dsl.Metrics(name="em", uri=str(tmp_path / "em"))
    out = evaluate.python_func(
        params_yaml=text,
        overrides=[],
        teacher=teacher,
        student=student,
        reports=ev_reports,
        report_md=md,
        metrics=ev_metrics,
    )
    assert out is None  # the gate runs in register, which always runs
    assert standin_stages()["evaluate"]["models"] == {
        "teacher": f"{teacher.path}/backbone.pth",
        "student": f"{student.path}/backbone.pth",
    }
    assert ev_metrics.metadata == {"mnist.student.knn_top1": 0.95}
    assert "student" in Path(md.path).read_text()

    registry = _art(dsl.Artifact, tmp_path / "registry.json")
    register.python_func(
        params_yaml=text,
        overrides=["register.min_knn_top1=0.9"],
        student=student,
        eval_reports=ev_reports,
        registry=registry,
    )
    rec = standin_stages()["register"]
    assert rec["model_path"] == student.path and rec["eval_report"] == f"{ev_reports.path}/eval.json"
    record = json.loads(Path(registry.path).read_text())
    assert record["alias_uri"] == "models:/dinoflow-student@champion"
    # the real gate's verdict: params.yaml's floors on the stand-in teacher / random-init scores
    assert record["gate"]["retention"] == pytest.approx(0.95 / 0.96)
    assert record["gate"]["teacher_gain"] == pytest.approx(0.96 - 0.10) and record["gate"]["reasons"] == []
    assert "registry gate passed: dinoflow-student version 1 is champion" in capsys.readouterr().out
    register.python_func(
        params_yaml=text,
        overrides=["register.min_knn_top1=0.99"],
        student=student,
        eval_reports=ev_reports,
        registry=registry,
    )
    assert standin_stages()["register"]["passed"] is False
    assert (
        "registry gate not passed: dinoflow-student version 1 registered as a candidate, no champion yet: "
        "knn_top1 0.9500 < min_knn_top1 0.9900 on mnist" in capsys.readouterr().out
    )


def test_user_overrides_cannot_redirect_artifacts(standin_stages, tmp_path):
    curated, *_ = _curate(tmp_path, PARAMS.read_text(), ["curate.out_dir=/elsewhere", "curate.work_dir=/elsewhere"], [])
    assert standin_stages()["curate"]["out_dir"] == curated.path
    assert standin_stages()["curate"]["parts"] == []  # the gathered work directory, not the override


def test_bad_launch_dict_is_refused_before_the_stage_runs(standin_stages, tmp_path):
    teacher, curves = _art(dsl.Model, tmp_path / "teacher"), _art(dsl.Artifact, tmp_path / "pretrain.csv")
    curated = _art(dsl.Dataset, tmp_path / "curated")
    with pytest.raises(DinoflowError, match=r"launch.gpu_per_node: unknown key .*the keys: num_nodes, gpus_per_node"):
        pretrain.python_func(
            params_yaml="", overrides=[], curated=curated, teacher=teacher, curves=curves, launch={"gpu_per_node": 2}
        )
    assert "pretrain" not in standin_stages()


def test_bad_override_is_a_clear_error(standin_stages, tmp_path):
    with pytest.raises(DinoflowError, match="curate.knn_kk"):
        _curate(tmp_path, "", ["curate.knn_kk=3"], [])
    with pytest.raises(DinoflowError, match="curate.knn_kk"):
        curate_plan.python_func(params_yaml="", overrides=["curate.knn_kk=3"], max_groups=2, data_version="")
