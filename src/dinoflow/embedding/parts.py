"""A Parquet file of (uid, embedding) built from parts, so a killed `dinoflow embed` resumes.

While it runs, `<out>.parts/` holds `state.json` (what the rows are made with: model hash,
pre-processing, input) and `part-000000.parquet`, … — each written atomically, each after the
uids it skipped (bad images, with the reason) in `part-000000.skipped.jsonl`: a list with no size
bound stays out of Parquet metadata, whose footer a reader refuses past 100 MB. A rerun with the
same settings skips every uid a part already holds; other settings are refused (the rows would mix
two models). `finish` marks the parts `finishing`, writes `<out>` (atomically, rows in input order)
and `<out stem>.skipped.json`, and removes the parts; a run stopped in between may be rerun over
its own `<out>` (the same rows).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dinoflow.errors import DinoflowError
from dinoflow.io import atomic_path, atomic_write_json

SKIPPED_META = b"dinoflow.skipped"
SETTINGS_META = b"dinoflow.embed"
STATE_FILE = "state.json"
FINISHING = "finishing"  # written before the output: the output beside these parts is theirs


def parts_dir(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def skipped_path(output: Path) -> Path:
    return output.with_name(output.stem + ".skipped.json")


def part_skipped_path(part: Path) -> Path:
    """`part-000000.parquet` → `part-000000.skipped.jsonl`."""
    return part.with_suffix(".skipped.jsonl")


def _read_skipped(part: Path) -> list[dict[str, str]]:
    try:
        with open(part_skipped_path(part), encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def _vectors(a: np.ndarray) -> pa.Array:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a.shape[1])


def read_embeddings(path: str | Path, column: str = "embedding") -> tuple[list[str], np.ndarray]:
    """(uids, float32 [N, D]) from a Parquet file written by `dinoflow embed`."""
    table = pq.read_table(path, columns=["uid", column])
    col = table.column(column).combine_chunks()
    dim = col.type.list_size
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return table.column("uid").to_pylist(), flat.reshape(-1, dim).astype(np.float32, copy=False)


class PartsSummary(TypedDict):
    """What `PartStore.finish` wrote: embedded rows, skipped images and the file that lists them."""

    rows: int
    skipped: int
    skipped_file: str


class PartStore:
    """The parts of one output file; see the module docstring."""

    def __init__(self, output: str | Path, settings: dict[str, Any], restart: bool = False) -> None:
        self.output = Path(output)
        self.dir = parts_dir(self.output)
        self.settings = settings
        if restart and self.dir.exists():
            shutil.rmtree(self.dir)
        state = self.dir / STATE_FILE
        if state.exists():
            before = json.loads(state.read_text())
            if before != settings:
                changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
                raise DinoflowError(
                    f"{self.dir} holds a partial run with other settings ({', '.join(changed)} differ): rerun with "
                    "the same model and input to resume, or pass --restart to discard it"
                )
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(state, settings)
        self._parts = sorted(self.dir.glob("part-*.parquet"))

    @staticmethod
    def finishing(output: str | Path) -> bool:
        """True when a run stopped inside `finish`: its output may be written, its parts not yet removed."""
        return (parts_dir(Path(output)) / FINISHING).is_file()

    def done(self) -> tuple[set[str], int, list[dict[str, str]]]:
        """(uids already embedded or skipped, rows so far, skipped records so far)."""
        uids: set[str] = set()
        rows = 0
        skipped: list[dict[str, str]] = []
        for part in self._parts:
            try:
                names = pq.read_table(part, columns=["uid"]).column("uid").to_pylist()
                part_skips = _read_skipped(part)
            except (OSError, ValueError) as e:
                raise DinoflowError(
                    f"{part} cannot be read to resume ({e}): pass --restart to discard the partial run"
                ) from None
            uids.update(names)
            rows += len(names)
            skipped += part_skips
        uids.update(s["uid"] for s in skipped)
        return uids, rows, skipped

    def write_part(self, uids: list[str], columns: dict[str, np.ndarray], skipped: list[dict[str, str]]) -> None:
        """One part: rows (uid + each [N, D] column) and the skipped records of the same stretch of input."""
        data = {"uid": pa.array(uids, pa.string()), **{k: _vectors(v) for k, v in columns.items()}}
        path = self.dir / f"part-{len(self._parts):06d}.parquet"
        with atomic_path(part_skipped_path(path)) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(s, ensure_ascii=False, sort_keys=True) + "\n" for s in skipped)
        with atomic_path(path) as tmp:  # the part itself last: it is what marks the stretch done
            pq.write_table(pa.table(data), tmp)
        self._parts.append(path)

    def finish(self, meta: dict[str, Any]) -> PartsSummary:
        """Concatenate the parts into the output file; returns {rows, skipped, skipped_file}."""
        tables = [pq.read_table(p) for p in self._parts]
        tables = [t for t in tables if t.num_rows]
        _, _, skipped = self.done()
        if not tables:
            atomic_write_json(skipped_path(self.output), skipped)
            raise DinoflowError(
                f"no image could be embedded ({len(skipped)} skipped; see {skipped_path(self.output)}): nothing to write"
            )
        table = pa.concat_tables(tables).replace_schema_metadata(
            {SETTINGS_META: json.dumps({**self.settings, **meta}), SKIPPED_META: json.dumps({"count": len(skipped)})}
        )
        (self.dir / FINISHING).touch()
        atomic_write_json(skipped_path(self.output), skipped)
        with atomic_path(self.output) as tmp:
            pq.write_table(table, tmp)
        shutil.rmtree(self.dir)
        return {"rows": table.num_rows, "skipped": len(skipped), "skipped_file": str(skipped_path(self.output))}

    def discard(self) -> None:
        """Remove the parts (nothing was found to embed)."""
        shutil.rmtree(self.dir, ignore_errors=True)
