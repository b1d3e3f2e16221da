"""`dinoflow pipeline compile|run|submit`: the Kubeflow DAG from the command line.

    dinoflow pipeline compile [-c cluster-params.yaml] [-o dinov2_pipeline.yaml]
    dinoflow pipeline run --local [-c params.yaml] [-S key=value ...] [--demo] [--pipeline-root DIR]
    dinoflow pipeline submit --host URL -c cluster-params.yaml [-S ...] [--experiment NAME] [--wait]

On a cluster the steps run in pods whose working directory is the image's read-only /app, so the
params given to `compile -c` and `submit` must name data by s3:// URI or absolute path (a
mounted volume): they are checked before anything is compiled or sent. `run --local` runs on
this machine, where the laptop demo's relative paths are fine.

Where this lives, and why: the layers are `dinoflow` (the library) < `components` (KFP
components, which name dinoflow functions) < `pipelines` (the DAG and this command). This command
compiles and submits the DAG, so it sits in the top layer, beside the DAG it imports; nothing in
`dinoflow` imports it (`dinoflow pipeline` reaches it through the CLI's table of delegated
subcommands, a name resolved when the subcommand runs), so there is no import cycle between the
library and the deployment files. All three packages are installed by pyproject.toml, so
`dinoflow pipeline ...` works from any directory, with no repository checkout and no `sys.path`
patching; the images carry them the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import yaml

from dinoflow.cli import add_config_args
from dinoflow.config import Config, ConfigError, load_config, pipeline_env
from dinoflow.config.stages import stage_inputs
from dinoflow.errors import DinoflowError
from dinoflow.stages import run_stage
from pipelines.ir_images import Images, apply_images, resolve_images, unpinned


def load_pipeline() -> Any:
    """The `dinov2_pipeline` function (a KFP GraphComponent), imported when a command needs it:
    building the DAG imports kfp and every component, which `--help` and the checks should not pay for."""
    from pipelines.dinov2_pipeline import dinov2_pipeline

    return dinov2_pipeline


def _params_text(path: str, overrides: list[str]) -> str:
    """The params file's text, after checking that it (with the overrides) is a valid config."""
    try:
        load_config(path, overrides)
    except ConfigError as e:
        raise DinoflowError(str(e)) from None
    p = Path(path)
    return p.read_text() if p.exists() else ""


# inputs the DAG does not wire from artifacts: the user's data, named by params
_CLUSTER_READ_STAGES = ("curate", "evaluate")


def cluster_problems(cfg: Config) -> list[str]:
    """Why these params cannot run in cluster pods (relative paths, laptop demo data), or []."""
    problems = []
    for stage in _CLUSTER_READ_STAGES:
        for inp in stage_inputs(stage, cfg):
            if stage == "evaluate" and inp.kind == "model":
                continue  # the DAG passes the trained models as artifacts
            if "://" not in inp.path and not Path(inp.path).is_absolute():
                problems.append(f"{stage} reads relative path {inp.path!r}")
    demo = [d.name for d in cfg.evaluate.datasets if d.kind.startswith("demo_")]
    if demo:
        problems.append(
            f"evaluate.datasets {demo} are the laptop demo's; give kind: folder with s3:// or absolute paths"
        )
    return problems


def _cluster_params_text(path: str, overrides: list[str]) -> str:
    text = _params_text(path, overrides)
    problems = cluster_problems(load_config(path, overrides))
    if problems:
        raise DinoflowError(
            f"{path} is not ready for a cluster: " + "; ".join(problems) + ". In a pod the working directory is the "
            "image's read-only /app: name data by s3:// URI or an absolute path on a mounted volume "
            "(template: pipelines/params.cluster.example.yaml)."
        )
    return text


def compact_params(text: str) -> str:
    """The params as one line of JSON (valid YAML). KFP copies parameter defaults into the IR
    file's header comment line by line, and a multi-line default breaks that YAML."""
    return json.dumps(yaml.safe_load(text) or {}, separators=(",", ":"), sort_keys=False)


def compile_pipeline(output: str | Path, params_path: str | None = None, images: Any = None) -> Path:
    """Write the IR YAML. With `params_path` (checked for cluster use) its params, as one-line JSON,
    become the default of `params_yaml`; without, `params_yaml` is a required run parameter.
    `images` (pipelines.ir_images.Images; default: the project's own names) become the steps'
    images, the default of the TrainJob `image` parameter and the pods' pull secrets."""
    from kfp import compiler

    images = images or Images()
    defaults: dict[str, Any] = {"image": images.train}
    if params_path:
        defaults["params_yaml"] = compact_params(_cluster_params_text(params_path, []))
    pipeline = load_pipeline()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dinoflow-ir-") as tmp:
        raw = Path(tmp) / "ir.yaml"
        compiler.Compiler().compile(pipeline, str(raw), pipeline_parameters=defaults)
        text = raw.read_text()
    docs = list(yaml.safe_load_all(text))
    apply_images(docs, images)
    # KFP's header comment (the parameters and their defaults) is kept; the documents are rewritten
    output.write_text(_header(text) + yaml.safe_dump_all(docs, sort_keys=False))
    return output


def _header(text: str) -> str:
    """The comment lines before the first YAML document."""
    lines = []
    for line in text.splitlines(keepends=True):
        if not line.startswith("#"):
            break
        lines.append(line)
    return "".join(lines)


def run_local(
    params_path: str,
    overrides: list[str],
    *,
    pipeline_root: str,
    demo: bool,
    runner: Any = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Run the DAG with kfp.local: by default the SubprocessRunner in this environment (lightweight
    components, CPU); `runner` may be a `kfp.local.DockerRunner` for the project's images. The run
    gets an id (`$DINOFLOW_PIPELINE_RUN_ID`, as the pod label gives it on a cluster)."""
    from kfp import local

    text = _params_text(params_path, overrides)
    if demo:
        cfg = load_config(params_path, overrides)
        if not (Path(cfg.demo.out_dir) / "ground_truth.json").exists():
            print(f"dinoflow pipeline: building the demo data in {cfg.demo.out_dir}", file=sys.stderr)
            run_stage("demo-data", cfg)
    pipeline = load_pipeline()
    run_id = run_id or f"local-{uuid.uuid4().hex[:12]}"
    previous = os.environ.get(pipeline_env.PIPELINE_RUN_ID)
    os.environ[pipeline_env.PIPELINE_RUN_ID] = run_id  # the SubprocessRunner's steps inherit it
    try:
        local.init(
            runner=runner or local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root, raise_on_error=True
        )
        task = pipeline(params_yaml=text, overrides=list(overrides), gpus_per_node=0, num_nodes=1)
    finally:
        if previous is None:
            os.environ.pop(pipeline_env.PIPELINE_RUN_ID, None)
        else:
            os.environ[pipeline_env.PIPELINE_RUN_ID] = previous
    return {
        "pipeline_root": str(Path(pipeline_root).resolve()),
        "run_id": run_id,
        "outputs": {k: str(v) for k, v in (task.outputs or {}).items()},
    }


# the ServiceAccount pipeline pods run as (k8s/overlays/*: the RoleBinding's subject)
RUNNER_SA_STANDALONE = "pipeline-runner"
RUNNER_SA_MULTI_USER = "default-editor"


def runner_service_account(namespace: str | None) -> str:
    """Standalone KFP runs steps as `pipeline-runner`; multi-user KFP (a profile namespace) as `default-editor`."""
    return RUNNER_SA_MULTI_USER if namespace else RUNNER_SA_STANDALONE


def submit(
    host: str,
    params_path: str,
    overrides: list[str],
    *,
    experiment: str,
    run_name: str | None,
    namespace: str | None,
    arguments: dict[str, Any],
    wait: bool,
    timeout: float,
    service_account: str | None = None,
    images: Any = None,
) -> dict[str, Any]:
    """Compile (with `images`, see compile_pipeline) and send the DAG to a KFP API endpoint (token
    from $KFP_TOKEN when it needs one)."""
    import kfp

    text = _cluster_params_text(params_path, overrides)
    account = service_account or runner_service_account(namespace)
    with tempfile.TemporaryDirectory(prefix="dinoflow-kfp-") as tmp:
        package = compile_pipeline(Path(tmp) / "dinov2_pipeline.yaml", images=images)
        try:
            client = kfp.Client(host=host, namespace=namespace, existing_token=os.environ.get("KFP_TOKEN"))
            run = client.create_run_from_pipeline_package(
                str(package),
                arguments={"params_yaml": text, "overrides": list(overrides), **arguments},
                run_name=run_name,
                experiment_name=experiment,
                namespace=namespace,
                service_account=account,
            )
        except Exception as e:  # noqa: BLE001 - kfp/urllib3 raise many types for an unreachable host
            raise DinoflowError(f"could not submit to the KFP endpoint {host}: {type(e).__name__}: {e}") from None
    out: dict[str, Any] = {"run_id": run.run_id, "host": host, "service_account": account}
    if wait:
        detail = client.wait_for_run_completion(run.run_id, timeout=timeout)
        out["state"] = str(getattr(detail, "state", ""))
    return out


def image_args(p: argparse.ArgumentParser) -> None:
    """Which images the steps run (pipelines/ir_images.py): the project publishes none of its own."""
    g = p.add_argument_group("images (build and push them first: make images REGISTRY=...)")
    g.add_argument("--registry", default=None, help="registry prefix for both images, e.g. ghcr.io/acme")
    g.add_argument(
        "--images-file", default=None, help="JSON {train, cpu} references (make images writes build/images.json)"
    )
    g.add_argument(
        "--train-image", "--image", dest="train_image", default=None, help="CUDA image (training steps, TrainJob pods)"
    )
    g.add_argument("--cpu-image", default=None, help="CPU image (curation, evaluation, registry steps)")
    g.add_argument(
        "--image-digest",
        action="append",
        default=[],
        metavar="KIND=sha256:HEX",
        help="pin the train or cpu image to a digest (KFP's cache key holds the image string, not its content)",
    )
    g.add_argument(
        "--image-pull-secret", action="append", default=[], help="secret for a private registry (repeatable)"
    )


def images_from_args(args: argparse.Namespace) -> Any:
    """The Images the command line names; unpinned references are named on stderr."""
    images = resolve_images(
        registry=args.registry,
        train=args.train_image,
        cpu=args.cpu_image,
        images_file=args.images_file,
        digests=args.image_digest,
        pull_secrets=args.image_pull_secret,
    )
    for ref in unpinned(images):
        print(
            f"dinoflow pipeline: {ref} has no @sha256 digest: KFP's cache key holds the image string, so a tag "
            "pushed again with other content is served from cache (pin it: --image-digest or --images-file)",
            file=sys.stderr,
        )
    return images


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dinoflow pipeline", description="compile, run locally, or submit the Kubeflow DAG"
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    def config_args(sp: argparse.ArgumentParser) -> None:
        add_config_args(sp, set_help="config override passed to every step (repeatable)")

    c = sub.add_parser("compile", help="write the pipeline IR YAML")
    c.add_argument(
        "-c",
        "--config",
        default=None,
        help="cluster params embedded as the default of params_yaml (default: none, a required run parameter)",
    )
    c.add_argument("-o", "--output", default="dinov2_pipeline.yaml")
    image_args(c)

    r = sub.add_parser("run", help="run the DAG here with kfp.local")
    config_args(r)
    r.add_argument(
        "--local", action="store_true", required=True, help="run with kfp.local's SubprocessRunner (required)"
    )
    r.add_argument("--demo", action="store_true", help="build the demo data first when it is missing")
    r.add_argument("--pipeline-root", default="local_outputs", help="where kfp.local keeps artifacts")

    s = sub.add_parser("submit", help="compile and submit to a Kubeflow Pipelines endpoint")
    config_args(s)
    s.add_argument("--host", required=True, help="KFP API URL, e.g. http://localhost:8080 after a port-forward")
    s.add_argument("--experiment", default="dinoflow")
    s.add_argument("--run-name", default=None)
    s.add_argument("--namespace", default=None, help="Kubeflow profile namespace (multi-user installs)")
    s.add_argument(
        "--service-account",
        default=None,
        help=f"ServiceAccount the steps run as (default: {RUNNER_SA_STANDALONE}; "
        f"{RUNNER_SA_MULTI_USER} with --namespace)",
    )
    s.add_argument("--gpus-per-node", type=int, default=None)
    s.add_argument("--num-nodes", type=int, default=None)
    s.add_argument("--accelerator-type", default=None)
    image_args(s)
    s.add_argument("--curate-groups", type=int, default=None, help="curation decode + embed tasks (default 4)")
    s.add_argument(
        "--curate-num-nodes",
        type=int,
        default=None,
        help="curation global step: 1 in its pod (default), more: a TrainJob of that many GPU nodes",
    )
    s.add_argument(
        "--curate-procs-per-node",
        type=int,
        default=None,
        help="curation global step: torchrun processes in its pod, or GPUs per TrainJob node",
    )
    s.add_argument("--wait", action="store_true", help="wait for the run to finish")
    s.add_argument("--timeout", type=float, default=24 * 3600.0)
    return p


# `submit` options that set pipeline parameters of the same name (dashes → underscores)
PIPELINE_ARGUMENTS = (
    "gpus_per_node",
    "num_nodes",
    "accelerator_type",
    "curate_groups",
    "curate_num_nodes",
    "curate_procs_per_node",
)


def submit_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline parameters given on the command line (the rest keep the DAG's defaults)."""
    return {k: getattr(args, k) for k in PIPELINE_ARGUMENTS if getattr(args, k) is not None}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.cmd == "compile":
            out = compile_pipeline(args.output, args.config, images_from_args(args))
            print(f"wrote {out}")
        elif args.cmd == "run":
            print(
                json.dumps(
                    run_local(args.config, args.overrides, pipeline_root=args.pipeline_root, demo=args.demo), indent=2
                )
            )
        else:
            extra = submit_arguments(args)
            print(
                json.dumps(
                    submit(
                        args.host,
                        args.config,
                        args.overrides,
                        experiment=args.experiment,
                        run_name=args.run_name,
                        namespace=args.namespace,
                        arguments=extra,
                        wait=args.wait,
                        timeout=args.timeout,
                        service_account=args.service_account,
                        images=images_from_args(args),
                    ),
                    indent=2,
                )
            )
    except DinoflowError as e:
        print(f"dinoflow pipeline {args.cmd}: {e}", file=sys.stderr)
        return 1
    return 0
