"""Hostile files through every stage that reads files: curate, pretrain's folder reader, evaluate's
folder datasets and `dinoflow embed`.

Each case must end in what corpus.py says: a manifest row with the right status, an entry in the
skip list, a named error naming the file, or the file used — never a raw traceback, a hang, or a
file that vanishes without a word. Cases fixed on another branch are strict xfails naming it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from fs_sandbox import unprivileged_prefix

from hostile.consumers import CONSUMERS, Outcome, layout, run_all, run_curate
from hostile.corpus import IMAGE_CASES, NEEDS_UNPRIVILEGED, SPECIAL_CASES, FileCase, write_good

CONSUMER_SECONDS = 60  # a bound for one consumer on a handful of files: a hang or a crawl fails
UNDECODABLE_LIMIT_S = 10  # a fresh process imports torch (~3 s) and must give up on 3 bad files
FIFO_PATIENCE_S = 3.0  # a reader blocked this long on a FIFO is hung (the watchdog then unblocks it)
HERE = Path(__file__).parent


class FifoWatchdog:
    """Unblocks readers stuck on FIFOs (opens the write end, closes it: they read EOF) and records it."""

    def __init__(self, fifos: list[Path]):
        self.fifos, self.fired, self._stop = fifos, False, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self._stop.wait(FIFO_PATIENCE_S):
            return
        while not self._stop.wait(0.2):
            for f in self.fifos:
                try:
                    fd = os.open(f, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only while a reader has it open
                except OSError:
                    continue
                self.fired = True
                os.close(fd)

    def __enter__(self) -> "FifoWatchdog":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _ascii_marker(name: str) -> str:
    """The longest printable-ASCII run of a name: what any report of it must still contain."""
    runs, cur = [], ""
    for ch in name:
        if 32 <= ord(ch) < 127:
            cur += ch
        else:
            runs.append(cur)
            cur = ""
    return max([*runs, cur], key=len)


def check(case: FileCase, consumer: str, out: Outcome, n_good: int) -> None:
    exp, name = getattr(case.expect, consumer), case.name
    assert out.seconds < CONSUMER_SECONDS, f"{consumer} took {out.seconds:.0f} s on {name!r}"
    assert not getattr(out, "fifo_blocked", False), f"{consumer} blocked on the FIFO {name!r} (unblocked by the test)"
    if consumer == "curate":
        assert out.code == 0, f"curate failed on {name!r}: {out.error}"
        kind, _, reason = exp.partition(":")
        if kind in ("corrupt", "junk", "decoded"):
            uid = case.entry or name
            assert uid in out.manifest, f"{uid!r} is missing from the manifest"
            status, detail = out.manifest[uid]
            if kind == "decoded":
                assert status != "corrupt", f"{name!r} should decode: {detail}"
            else:
                assert status == kind and detail.startswith(reason), (status, detail)
        elif kind == "skipped":
            assert name in out.report.get("skipped_files", []), f"{name!r} not in skipped_files"
        else:
            marker = _ascii_marker(name)
            assert out.mentions(name) or out.mentions(marker), (
                f"{name!r} appears in neither the manifest nor the report"
            )
        return
    if consumer == "embed":
        check_embed(exp, case.entry or name, out, n_good)
        return
    if exp == "named_error":
        assert out.error_type == "DinoflowError", (
            f"{consumer}: expected a named error for {name!r}, got {out.error_type or 'success'}: {out.error}"
        )
        assert _ascii_marker(name) in out.error, f"the error does not name {name!r}: {out.error}"
        return
    assert out.error_type == "", f"{consumer} failed on {name!r}: {out.error}"
    if consumer == "pretrain":
        want = {"used": (n_good + 1, 0), "skipped": (n_good, None), "ignored": (n_good, 0)}[exp]
        assert out.used == want[0], f"{out.used} samples in the epoch, expected {want[0]}"
        if want[1] is None:
            assert out.skipped >= 1, f"{name!r} was neither used nor counted as skipped"
        else:
            assert out.skipped == want[1]
    else:  # evaluate: 4 good images + the case
        assert out.used == 4 + (exp == "loaded"), f"{out.used} images loaded"


def check_embed(exp: str, uid: str, out: Outcome, n_good: int) -> None:
    """`dinoflow embed` finished (exit 0) with the good images as rows and the case where corpus.py says."""
    from dinoflow.data.sources import printable

    uid = printable(uid)  # a name that is not UTF-8 is a uid with \xNN escapes
    assert out.code == 0 and out.error_type == "", f"embed failed on {uid!r}: {out.error}"
    embedded = [u for u, (status, _) in out.manifest.items() if status == "embedded"]
    kind, _, reason = exp.partition(":")
    if kind == "embedded":
        assert uid in embedded and len(embedded) == n_good + 1, (uid, embedded)
    elif kind == "skipped":
        assert uid in out.manifest and out.manifest[uid][0] == "skipped", f"{uid!r} is not in the skipped list"
        assert out.manifest[uid][1].startswith(reason), out.manifest[uid]
        assert len(embedded) == n_good
    else:  # ignored: not an image input, never read
        assert uid not in out.manifest and len(embedded) == n_good, out.manifest


# ---------------------------------------------------------------- image-like files


@pytest.fixture(scope="module")
def image_outcomes(tmp_path_factory) -> dict[str, dict[str, Outcome]]:
    """Curate once over a pool of every image case (+3 good images); the folder readers per case."""
    root = tmp_path_factory.mktemp("hostile-images")
    pool = root / "pool"
    write_good(pool, 3, 50)
    for case in IMAGE_CASES:
        case.make(pool / case.name)
    curated = run_curate(pool, root / "curate-work")
    out: dict[str, dict[str, Outcome]] = {}
    for i, case in enumerate(IMAGE_CASES):
        folders = layout(root / f"case{i:02d}", case.make, case.name, write_good)
        folders.pop("curate")
        out[case.name] = {"curate": curated, **run_all(folders, root / f"work{i:02d}")}
    return out


@pytest.mark.parametrize("consumer", list(CONSUMERS))
@pytest.mark.parametrize("case", IMAGE_CASES, ids=lambda c: c.name[:40].replace("\n", "\\n"))
def test_image_case(case, consumer, image_outcomes):
    check(case, consumer, image_outcomes[case.name][consumer], n_good=2)


# ---------------------------------------------------------------- file-system objects


def _run_special(case: FileCase) -> dict[str, Outcome]:
    root = Path(tempfile.mkdtemp(prefix="dinoflow-hostile-"))
    root.chmod(0o777)  # the unprivileged run writes its outputs here
    try:
        folders = layout(root / "in", case.make, case.name, write_good)
        for d in (root / "in").rglob("*"):
            if d.is_dir() and not d.is_symlink() and d.name != case.name:
                d.chmod(0o755)
        if case.name in NEEDS_UNPRIVILEGED:
            cmd = [
                *unprivileged_prefix(),
                sys.executable,
                str(HERE / "consumers.py"),
                json.dumps({k: str(v) for k, v in folders.items()}),
                str(root / "work"),
            ]
            r = subprocess.run(
                cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"}
            )
            assert r.returncode == 0, r.stderr[-3000:]
            return {c: Outcome(**o) for c, o in json.loads(r.stdout.strip().splitlines()[-1]).items()}
        out = {}
        for consumer, folder in folders.items():
            fifos = [folder / case.name, folder / "train" / "a" / case.name] if case.name.startswith("fifo") else []
            with FifoWatchdog(fifos) as wd:
                o = CONSUMERS[consumer](folder, root / "work" / consumer)
            out[consumer] = replace(o)
            out[consumer].fifo_blocked = wd.fired  # type: ignore[attr-defined]
        return out
    finally:
        for p in root.rglob("*"):
            if not p.is_symlink():
                p.chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def special_outcomes():
    cache: dict[str, dict[str, Outcome]] = {}

    def get(case: FileCase) -> dict[str, Outcome]:
        if case.name not in cache:
            cache[case.name] = _run_special(case)
        return cache[case.name]

    return get


def _special_params():
    for case in SPECIAL_CASES:
        for consumer in CONSUMERS:
            marks = [pytest.mark.xfail(strict=True, reason=case.xfail[consumer])] if consumer in case.xfail else []
            yield pytest.param(case, consumer, marks=marks, id=f"{_ascii_marker(case.name)}-{consumer}")


@pytest.mark.parametrize("case,consumer", list(_special_params()))
def test_special_file(case, consumer, special_outcomes):
    check(case, consumer, special_outcomes(case)[consumer], n_good=2)


def test_training_folder_of_undecodable_files_is_a_named_error(tmp_path):
    """Only undecodable files: the reader must stop with a named error, not loop forever."""
    folder = tmp_path / "junk"
    folder.mkdir()
    for i in range(3):
        (folder / f"bad_{i}.png").write_bytes(b"not a png %d" % i)
    cmd = [sys.executable, str(HERE / "consumers.py"), json.dumps({"pretrain": str(folder)}), str(tmp_path / "work")]
    t0 = time.monotonic()
    try:
        r = subprocess.run(
            cmd, capture_output=True, text=True, timeout=UNDECODABLE_LIMIT_S, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"the training reader ran {UNDECODABLE_LIMIT_S} s over a folder with no decodable image (it loops forever)"
        )
    out = Outcome(**json.loads(r.stdout.strip().splitlines()[-1])["pretrain"])
    assert out.error_type == "DinoflowError" and str(folder) in out.error, out.error
    assert time.monotonic() - t0 < UNDECODABLE_LIMIT_S
