"""`dinoflow embed MODEL INPUT -o OUT.parquet`: embeddings of every image of INPUT with MODEL.

    dinoflow embed models:/dinoflow-student@champion data/demo/eval -o eval.parquet
    dinoflow embed models/student/backbone.pth s3://bucket/images/ -o emb.parquet --pooled-patch-tokens
    dinoflow embed models/student shards/ -o emb.parquet        # a killed run resumes when rerun

MODEL: a registry or run URI (`models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/ID/student`;
the tracking server comes from --tracking-uri, $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db) or a
backbone file / its folder (pre-processing from the config's `evaluate` section unless given).
INPUT: an image folder (recursive), a .tar shard or a folder of them, or s3://bucket/prefix.
Writes OUT (Parquet: uid, embedding float32[D], + pooled_patch_tokens) and OUT's stem
.skipped.json (bad images, images beyond the `serving` bounds of the config, shards truncated as
stored: uid and reason); prints a JSON summary. One run per output at a time (OUT.lock).
"""

from __future__ import annotations

import argparse
import json
import sys

from dinoflow import tracking
from dinoflow.config import ConfigError, load_config
from dinoflow.embedding.limits import Limits
from dinoflow.errors import DinoflowError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dinoflow embed",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    p.add_argument("model", help="models:/NAME@ALIAS (or another MLflow model URI), or a backbone.pth / its folder")
    p.add_argument("input", help="image folder, .tar shard(s) folder or file, or s3://bucket/prefix")
    p.add_argument("-o", "--output", required=True, help="the Parquet file to write (e.g. embeddings.parquet)")
    p.add_argument("--pooled-patch-tokens", action="store_true", help="also write the L2-normalised mean patch token")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--part-size", type=int, default=4096, help="rows per resumable part (default 4096)")
    p.add_argument("--restart", action="store_true", help="discard a partial run instead of resuming it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--tracking-uri", help="MLflow tracking server for a models:/ URI")
    p.add_argument(
        "-c",
        "--config",
        default="params.yaml",
        help="config: a backbone file's pre-processing (evaluate section); the bounds on one image (serving section)",
    )
    p.add_argument("--image-size", type=int, help="backbone file: centre-crop side (default: evaluate.image_size)")
    p.add_argument("--resize-ratio", type=float, help="backbone file: resize ratio (default: evaluate.resize_ratio)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _check(args: argparse.Namespace) -> None:
    """Refuse bad arguments before loading anything."""
    if args.batch_size < 1 or args.part_size < 1:
        raise DinoflowError(f"--batch-size and --part-size must be >= 1; got {args.batch_size}, {args.part_size}")
    if args.image_size is not None and args.image_size < 1:
        raise DinoflowError(f"--image-size must be >= 1; got {args.image_size}")
    if args.resize_ratio is not None and args.resize_ratio < 1:
        raise DinoflowError(f"--resize-ratio must be >= 1 (resize, then centre crop); got {args.resize_ratio}")
    from dinoflow.embedding.output import check_output

    check_output(args.output, args.overwrite, args.restart)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check(args)
        from dinoflow.embedding.job import is_model_uri, load_model, run_embed

        try:
            cfg = load_config(args.config)
        except ConfigError as e:
            raise DinoflowError(str(e)) from None
        if is_model_uri(args.model):
            import mlflow

            mlflow.set_tracking_uri(args.tracking_uri or tracking.tracking_uri(None))
            size, ratio = 0, 1.0  # the model carries its own pre-processing
        else:
            size = args.image_size or cfg.evaluate.image_size
            ratio = args.resize_ratio or cfg.evaluate.resize_ratio
        model = load_model(args.model, size, ratio)
        summary = run_embed(
            model,
            args.input,
            args.output,
            batch_size=args.batch_size,
            part_size=args.part_size,
            pooled=args.pooled_patch_tokens,
            restart=args.restart,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            limits=Limits.from_settings(cfg.serving),
        )
    except DinoflowError as e:
        print(f"dinoflow embed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dinoflow embed: interrupted; rerun the same command to resume ({args.output})", file=sys.stderr)
        return 130
    if summary["skipped"]:
        print(
            f"dinoflow embed: skipped {summary['skipped']} bad image(s), listed in {summary['skipped_file']}",
            file=sys.stderr,
        )
    print(json.dumps(summary, indent=2))
    return 0
