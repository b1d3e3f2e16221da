"""`dinoflow <stage>`: one subcommand per stage, plus `pipeline`, `demo`, `embed` and `config`.

Usage:
    dinoflow curate -c params.yaml -S curate.near_dup_threshold=0.9
    torchrun --nproc-per-node=2 -m dinoflow pretrain -S pretrain.train.max_steps=10
    dinoflow pipeline compile|run|submit ...
    dinoflow demo
    dinoflow embed models:/dinoflow-student@champion images/ -o embeddings.parquet
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from dinoflow.config import ConfigError, dump_config, load_config
from dinoflow.errors import DinoflowError
from dinoflow.stages import STAGES, run_stage

# Subcommands with their own argument parsing: name → "module:function(argv) -> int".
DELEGATED = {
    "pipeline": "dinoflow.pipeline_cli:main",
    "demo": "dinoflow.demo:main",
    "embed": "dinoflow.embedding.cli:main",
}


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument(
        "-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. -S pretrain.train.max_steps=10 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dinoflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in STAGES:
        _add_config_args(sub.add_parser(name, help=f"run the {name} stage"))
    cfg_p = sub.add_parser("config", help="print the resolved, validated configuration")
    _add_config_args(cfg_p)
    for name in DELEGATED:
        sub.add_parser(name, help=f"{name} (see `dinoflow {name} --help`)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        module, fn = DELEGATED[argv[0]].split(":")
        return int(getattr(importlib.import_module(module), fn)(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"dinoflow: {e}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(dump_config(cfg), end="")
        return 0
    try:
        summary = run_stage(args.command, cfg)
    except DinoflowError as e:
        print(f"dinoflow {args.command}: {e}", file=sys.stderr)
        return 1
    if summary is not None and os.environ.get("RANK", "0") == "0":  # one summary per torchrun job
        print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
