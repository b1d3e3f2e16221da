"""A curated directory as its readers see it: the completeness record and the check they run.

`dinoflow curate` writes the shards, `manifest.parquet` (one row per input uid, `kept` or why it
was dropped), `skipped.jsonl` and, LAST and atomically, `manifest.json`: every shard with its
size, sha256 and sample count, and the manifest's (and the skipped list's) own size and sha256.
Before a run touches any shard it removes both and leaves `CURATION_INCOMPLETE`, so a killed run
never leaves an old manifest beside new shards. Readers (training, the demo's scoring) go through
`verify_curated`, which refuses a directory whose run did not finish or whose shards do not match,
and `check_record`, which makes a record edited by hand a named error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dinoflow.data import s3
from dinoflow.data.shards import list_shards
from dinoflow.digest import file_sha256
from dinoflow.errors import DinoflowError

RECORD = "manifest.json"
TABLE = "manifest.parquet"
INCOMPLETE = "CURATION_INCOMPLETE"
RECORD_FORMAT = 1


def _read_record(source: str) -> dict | None:
    if s3.is_s3_url(source):
        url = source.rstrip("/") + "/" + RECORD
        keys = s3.list_keys(url)
        return json.loads(s3.read_bytes(url)) if url.split("/", 3)[3] in keys else None
    p = Path(source) / RECORD
    return json.loads(p.read_text()) if p.is_file() else None


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _file_problem(what: str, d: Any) -> str | None:
    if not isinstance(d, dict):
        return f"{what} is {type(d).__name__}, not an object"
    name, sha = d.get("name"), d.get("sha256")
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        return f"{what} has no plain file name (name: {name!r})"
    if not _int(d.get("bytes")):
        return f"{what} {name!r} has bytes {d.get('bytes')!r}, not a byte count"
    if not (isinstance(sha, str) and len(sha) == 64 and all(ch in "0123456789abcdef" for ch in sha)):
        return f"{what} {name!r} has no sha256 hex digest"
    return None


def _record_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return f"it holds a JSON {type(record).__name__}, not an object"
    if record.get("format") != RECORD_FORMAT:
        return f"format is {record.get('format')!r}, expected {RECORD_FORMAT}"
    shards = record.get("shards")
    if not isinstance(shards, list):
        return f"shards is {type(shards).__name__}, not a list"
    for i, sh in enumerate(shards):
        why = _file_problem(f"shards[{i}]", sh) or (
            None if _int(sh.get("samples")) else f"shards[{i}] has samples {sh.get('samples')!r}, not a count"
        )
        if why:
            return why
    names = [sh["name"] for sh in shards]
    if len(set(names)) != len(names):
        return "a shard is listed twice"
    why = _file_problem("manifest", record.get("manifest"))
    if why is None and "skipped" in record:  # records of older runs have no skipped list
        why = _file_problem("skipped", record["skipped"])
    if why:
        return why
    if not isinstance(record.get("remaining"), dict):
        return "remaining is missing or not an object"
    return None


def check_record(record: Any, where: str) -> None:
    """Raise a DinoflowError naming what is wrong when `record` is not a completeness record as curate writes it."""
    why = _record_problem(record)
    if why:
        raise DinoflowError(
            f"{where} is not a curation record as `dinoflow curate` writes it ({why}); it is not meant to be "
            "edited: rerun `dinoflow curate` to write the directory and its record again"
        )


def verify_curated(source: str | Path, *, deep: bool = False) -> dict | None:
    """Check a shard directory (local or s3://) before training reads it.

    Returns the completeness record, or None for a plain shard directory that curate never wrote.
    Raises DinoflowError when curate started writing it and did not finish, or when a shard is
    missing, has another size (or, with `deep`, another sha256), or is not listed.
    """
    src = str(source)
    try:
        record = _read_record(src)
    except (OSError, ValueError) as e:
        raise DinoflowError(f"{src}/{RECORD} cannot be read ({e}): rerun `dinoflow curate`") from None
    if record is None:
        local = not s3.is_s3_url(src)
        if local and ((Path(src) / INCOMPLETE).exists() or (Path(src) / TABLE).exists()):
            raise DinoflowError(
                f"{src} is an incomplete curated directory (no {RECORD}: the curate run that wrote it did not "
                "finish); rerun `dinoflow curate` before training on it"
            )
        return None
    check_record(record, f"{src}/{RECORD}")
    listed = {s["name"]: s for s in record["shards"]}
    present = {u.rsplit("/", 1)[-1]: u for u in list_shards(src)} if (s3.is_s3_url(src) or Path(src).is_dir()) else {}
    problems = [f"{n} is missing" for n in listed if n not in present]
    problems += [f"{n} is not in the manifest" for n in present if n not in listed]
    if not s3.is_s3_url(src):
        for name, s in listed.items():
            p = Path(src) / name
            if p.is_file() and p.stat().st_size != s["bytes"]:
                problems.append(f"{name} has {p.stat().st_size} bytes, the manifest says {s['bytes']}")
            elif deep and p.is_file() and file_sha256(p) != s["sha256"]:
                problems.append(f"{name} does not match its sha256 in the manifest")
    if problems:
        raise DinoflowError(
            f"curated directory {src} does not match its {RECORD}: "
            + "; ".join(problems[:5])
            + " — rerun `dinoflow curate`"
        )
    return record
