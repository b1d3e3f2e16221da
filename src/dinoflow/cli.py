"""`dinoflow <stage>`: one subcommand per stage, plus `pipeline`, `demo`, `embed` and `config`.

Usage:
    dinoflow curate -c params.yaml -S curate.near_dup_threshold=0.9
    torchrun --nproc-per-node=2 -m dinoflow pretrain -S pretrain.train.max_steps=10
    dinoflow pipeline compile|run|submit ...
    dinoflow demo
    dinoflow embed models:/dinoflow-student@champion images/ -o embeddings.parquet

Exit codes: 0 done; 1 a named error stopped the stage (bad input, full disk, unreachable
service, …); 2 the configuration or command line is invalid (nothing was started). Named errors
print one message without a traceback; `DINOFLOW_DEBUG=1` prints the traceback too.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from dinoflow.config import Config, ConfigError, dump_config, load_config
from dinoflow.errors import FULL_BYTES, DinoflowError, bounded, free_bytes, full_disk_error, storage_error
from dinoflow.stages import STAGES, run_stage

DEBUG_ENV = "DINOFLOW_DEBUG"
# keys whose values are where a stage writes (a file's folder for the file-valued ones)
OUTPUT_DIR_KEYS = ("out_dir", "report_dir")
OUTPUT_FILE_KEYS = ("report_csv", "report")

# Subcommands with their own argument parsing: name → "module:function(argv) -> int".
DELEGATED = {
    "pipeline": "pipelines.cli:main",
    "demo": "dinoflow.demo.command:main",
    "embed": "dinoflow.embedding.cli:main",
}


def add_config_args(
    p: argparse.ArgumentParser,
    set_help: str = "override a config value, e.g. -S pretrain.train.max_steps=10 (repeatable)",
) -> None:
    """`-c/--config` (the params file) and repeatable `-S/--set KEY=VALUE` overrides."""
    p.add_argument("-c", "--config", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=set_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dinoflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in STAGES:
        add_config_args(sub.add_parser(name, help=f"run the {name} stage"))
    cfg_p = sub.add_parser("config", help="print the resolved, validated configuration")
    add_config_args(cfg_p)
    for name in DELEGATED:
        sub.add_parser(name, help=f"{name} (see `dinoflow {name} --help`)", add_help=False)
    return parser


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0", "false", "no")


def output_locations(cfg: Config, command: str) -> list[Path]:
    """Local folders the stage writes to (its out_dir / report_dir / report files' folders, and the cwd)."""
    section = getattr(cfg, "demo" if command == "demo-data" else command.replace("-", "_"), None)
    tree = section.model_dump() if section is not None else {}
    out = [Path(str(tree[k])) for k in OUTPUT_DIR_KEYS if tree.get(k)]
    out += [Path(str(tree[k])).parent for k in OUTPUT_FILE_KEYS if tree.get(k)]
    return [p for p in out if "://" not in str(p)] + [Path(".")]


def _free(p: Path) -> int:
    try:
        return free_bytes(p)
    except OSError:
        return FULL_BYTES


def _close_progress_bars() -> None:
    # A bar left open by the failed stage would redraw itself after the message at exit.
    tqdm_module = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm_module, "tqdm", None), "_instances", None) or []):
        bar.close()


def _report(label: str, message: str) -> None:
    _close_progress_bars()
    print(f"{label}: {bounded(message)}", file=sys.stderr)


def run_guarded(label: str, fn: Callable[[], Any], outputs: list[Path]) -> tuple[int, Any]:
    """(0, fn()) — or (exit code, None) after printing one named error when fn fails with a
    DinoflowError, or with a full disk / read-only / permission OSError from anywhere inside."""
    try:
        return 0, fn()
    except DinoflowError as e:
        if _debug():
            traceback.print_exc()
        _report(label, str(e))
        return e.exit_code, None
    except BaseException as e:  # torch.distributed.checkpoint's CheckpointException is a BaseException
        if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        full = [p for p in outputs if _free(p) < FULL_BYTES]
        named = storage_error(e, full[0] if full else None) or full_disk_error(e, full)
        if named is None:
            raise
        if _debug():
            traceback.print_exc()
        hint = "" if _debug() else f" ({DEBUG_ENV}=1 shows the traceback)"
        _report(label, f"{named}{hint}")
        return named.exit_code, None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        module, fn = DELEGATED[argv[0]].split(":")
        code, result = run_guarded(
            f"dinoflow {argv[0]}", lambda: getattr(importlib.import_module(module), fn)(argv[1:]), [Path(".")]
        )
        return code or int(result or 0)
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"dinoflow: {bounded(str(e))}", file=sys.stderr)
        return e.exit_code
    if args.command == "config":
        print(dump_config(cfg), end="")
        return 0
    code, summary = run_guarded(
        f"dinoflow {args.command}", lambda: run_stage(args.command, cfg), output_locations(cfg, args.command)
    )
    if code:
        return code
    if summary is not None and os.environ.get("RANK", "0") == "0":  # one summary per torchrun job
        print(json.dumps(summary, indent=2, default=str))
    return 0


def _leave_process_group() -> None:
    """Destroy the process group a stage joined under torchrun. Left to interpreter teardown, gloo's
    threads can abort a finished rank ("terminate called without an active exception", exit -6)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def entry() -> None:
    """The `dinoflow` command (console script and `python -m dinoflow`): `main`, then exit with its code."""
    code = main()
    if code == 0:  # a failed rank exits as it is: a group with a collective in flight may not tear down
        _leave_process_group()
    # Interpreter teardown runs full garbage collections over every object torch, pandas and
    # matplotlib created (~0.5 s per process here, paid by each torchrun rank); frozen objects are
    # skipped. atexit handlers still run. Only at process exit: in-process callers of main() keep GC.
    gc.freeze()
    raise SystemExit(code)


if __name__ == "__main__":
    entry()
