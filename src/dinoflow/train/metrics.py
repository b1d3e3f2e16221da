"""Per-step metrics kept on the device and read in one transfer every `log_every` steps, and the
CSV they end up in (`dvc plots`).

Reading a GPU value waits for every kernel queued before it; doing that for each loss term of
each step (as `float(loss)` does) stalls the device dozens of times per step. Here a step only
appends its 0-d tensors; `read()` stacks the window's values, copies them once, checks every
loss (a non-finite one stops the job with the step it happened at) and returns plain rows.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any

import torch

from dinoflow.errors import DinoflowError
from dinoflow.io import atomic_write_text


class StepMetrics:
    def __init__(self, images_per_step: int, epoch_length: int):
        self.images_per_step, self.epoch_length = images_per_step, epoch_length
        self.pending: list[tuple[int, torch.Tensor, dict[str, torch.Tensor], dict[str, float], int]] = []
        self.skipped_total = 0
        self.t_last = time.perf_counter()

    def add(
        self, step: int, loss: torch.Tensor, terms: dict[str, torch.Tensor], schedule: dict[str, float], skipped: int
    ) -> None:
        self.skipped_total += int(skipped)
        self.pending.append((step, loss, terms, dict(schedule), self.skipped_total))

    def read(self) -> list[dict[str, Any]]:
        """The pending steps as rows of floats; DinoflowError at the first non-finite loss."""
        if not self.pending:
            return []
        now = time.perf_counter()
        ips = self.images_per_step * len(self.pending) / max(now - self.t_last, 1e-9)
        self.t_last = now
        keys = list(self.pending[0][2])
        flat = (
            torch.stack(
                [
                    torch.stack([loss.float(), *(terms[k].float() for k in keys)])
                    for _, loss, terms, _, _ in self.pending
                ]
            )
            .cpu()
            .tolist()
        )
        rows = []
        for (step, _, _, sched, skipped), values in zip(self.pending, flat):
            loss, term_values = values[0], dict(zip(keys, values[1:]))
            if not math.isfinite(loss):
                self.pending = []
                raise DinoflowError(
                    f"the loss became {loss} at step {step} (terms: {term_values}); stopping. The last good "
                    "checkpoint is kept: lower optim.base_lr, check the data, or raise optim.warmup_epochs, "
                    "then resume"
                )
            rows.append(
                {
                    "step": step,
                    "epoch": round(step / self.epoch_length, 4),
                    "loss": loss,
                    **term_values,
                    **sched,
                    "images_per_s": round(ips, 2),
                    "skipped_images": skipped,
                }
            )
        self.pending = []
        return rows


class CsvLog:
    """Per-step metrics for `dvc plots`, appended at each flush (never rewritten: a long run would
    otherwise rewrite the whole file every few steps). On resume the file is cut back once,
    atomically, to the rows of steps the checkpoint covers — which also drops a row a kill left
    half-written — so no step appears twice. Each checkpoint keeps a copy (`saved`), which
    restores the rows when the file itself is gone (DVC deletes it before rerunning a stage)."""

    def __init__(self, path: str | Path, start_step: int, saved: Path | None = None):
        self.path = Path(path)
        self.pending: list[dict[str, Any]] = []
        self.fields: list[str] | None = None
        kept: list[dict[str, Any]] = []
        src = saved if saved is not None and saved.is_file() else self.path
        if start_step > 0 and src.exists():
            with src.open() as f:
                reader = csv.DictReader(f)
                self.fields = list(reader.fieldnames or []) or None
                kept = [
                    r
                    for r in reader
                    if r.get("step", "").isdigit() and None not in r.values() and int(r["step"]) <= start_step
                ]
        if self.fields is None or not kept:
            self.fields = None
            if self.path.exists():
                self.path.unlink()
        else:
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=self.fields)
            w.writeheader()
            w.writerows(kept)
            atomic_write_text(self.path, buf.getvalue())

    def add(self, row: dict[str, Any]) -> None:
        self.pending.append(row)

    def flush(self) -> None:
        if not self.pending:
            return
        fields, new_file = self.fields, self.fields is None
        if fields is None:  # the first row fixes the columns; every step logs the same keys
            fields = self.fields = list(self.pending[0])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new_file:
                w.writeheader()
            w.writerows(self.pending)
        self.pending = []
