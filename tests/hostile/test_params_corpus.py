"""Hostile parameter sets through `dinoflow config` and every stage's CLI entry.

Each file in params/ starts with comment lines that say what must happen:
    # expect: <regex>      the message (searched in stderr) — required
    # entries: a b         only these entries (default: every entry in ENTRIES)
    # absent: <text>       must not appear in stderr or stdout (a secret)
    # absent-file: <name>  must not exist afterwards (code run from the YAML)
    # xfail: <reason>      fixed on another branch (a strict xfail)
Other files (binary, a directory, a FIFO, huge, empty, not UTF-8) are made at test time.

Every entry must refuse before any work starts: exit code 2, the expected message, no traceback,
nothing written in the working directory, within `LIMIT_S`.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from dinoflow.cli import main
from dinoflow.config.params_yaml import MAX_PARAMS_BYTES
from dinoflow.stages import STAGES

PARAMS = Path(__file__).parent / "params"
ENTRIES = ["config", *STAGES, "demo"]  # `demo` parses its own arguments (-c only)
LIMIT_S = 3.0  # refusing a params file is instant; this bounds hostile YAML (the alias bomb took 37 s)


@dataclass
class ParamsCase:
    name: str
    expect: str
    make: Callable[[Path], Path] | None = None  # builds the file in a folder; None: params/<name>
    entries: list[str] = field(default_factory=lambda: list(ENTRIES))
    absent: list[str] = field(default_factory=list)
    absent_files: list[str] = field(default_factory=list)
    xfail: str = ""

    def path(self, tmp: Path) -> Path:
        return self.make(tmp) if self.make else PARAMS / self.name


def _from_file(path: Path) -> ParamsCase:
    case = ParamsCase(path.name, "")
    for line in path.read_text().splitlines():
        m = re.match(r"#\s*([a-z-]+):\s*(.*)$", line)
        if not m:
            continue
        key, value = m.groups()
        if key == "expect":
            case.expect = value
        elif key == "entries":
            case.entries = value.split()
        elif key == "absent":
            case.absent.append(value)
        elif key == "absent-file":
            case.absent_files.append(value)
        elif key == "xfail":
            case.xfail = value
    assert case.expect, f"{path} has no `# expect:` line"
    return case


def _write(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        p = tmp / name
        p.write_bytes(data)
        return p

    return make


def _directory(tmp: Path) -> Path:
    (tmp / "params.d").mkdir()
    return tmp / "params.d"


def _fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "fifo.yaml")  # no writer: reading it must not block
    return tmp / "fifo.yaml"


GENERATED = [
    ParamsCase("zero_bytes.yaml", r"is empty \(no settings\)", _write("zero_bytes.yaml", b"")),
    ParamsCase(
        "notes.txt",
        r"top level must be a mapping of sections \(e\.g\. `pretrain:`\), got a str",
        _write("notes.txt", b"remember to set the learning rate\n"),
    ),
    ParamsCase("binary.yaml", "holds NUL bytes: it is a binary file", _write("binary.yaml", bytes(range(256)) * 8)),
    ParamsCase(
        "latin1.yaml",
        r"is not UTF-8 text \(bad byte at offset 20\)",
        _write("latin1.yaml", "pretrain: {data: caf\xe9}\n".encode("latin-1")),
    ),
    ParamsCase(
        "oversized.yaml",
        "more than a params file may hold",
        _write("oversized.yaml", b"# x\n" * (MAX_PARAMS_BYTES // 4 + 1)),
    ),
    ParamsCase("a directory", "is a directory; -c takes a params YAML file", _directory),
    ParamsCase("fifo.yaml", r"is empty \(no settings\)", _fifo),
    ParamsCase("missing.yaml", "config file .*missing.yaml not found", lambda tmp: tmp / "missing.yaml"),
]
CASES = [_from_file(p) for p in sorted(PARAMS.glob("*.yaml"))] + GENERATED


def _params():
    for case in CASES:
        for entry in case.entries:
            marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
            yield pytest.param(case, entry, marks=marks, id=f"{case.name}-{entry}")


def run_entry(entry: str, params: Path) -> tuple[int, str, str, float]:
    """`dinoflow <entry> -c params` in this process: (exit code, stdout, stderr, seconds)."""
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([entry, "-c", str(params)])
        except SystemExit as e:  # argparse
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue(), time.perf_counter() - t0


@pytest.mark.parametrize("case,entry", list(_params()))
def test_hostile_params_are_refused_before_work(case: ParamsCase, entry: str, tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    params = case.path(tmp_path)
    code, out, err, seconds = run_entry(entry, params)
    assert code == 2, f"exit code {code}; stderr: {err[-2000:]}"
    assert re.search(case.expect, err), f"expected /{case.expect}/ in: {err[-2000:]}"
    assert "Traceback" not in err
    assert len(err) < 5000, f"a {len(err)}-character error message"
    assert seconds < LIMIT_S, f"took {seconds:.1f} s"
    assert list(work.iterdir()) == [], f"work started: {sorted(p.name for p in work.iterdir())}"
    for secret in case.absent:
        assert secret not in err and secret not in out
    for name in case.absent_files:
        assert not (work / name).exists() and not Path(name).exists()


# One real process per kind of hostile file: the exit code is the process's, stderr has no traceback.
PROCESS_CASES = [
    "alias_bomb.yaml",
    "python_object_tag.yaml",
    "s3_credentials_in_url.yaml",
    "binary.yaml",
    "a directory",
    "only_comments.yaml",
    "duplicate_key.yaml",
    "base_lr_inf.yaml",
]


@pytest.mark.parametrize("name", PROCESS_CASES)
def test_hostile_params_in_a_real_process(name, tmp_path):
    case = next(c for c in CASES if c.name == name)
    params = case.path(tmp_path)
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "dinoflow", "config", "-c", str(params)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and re.search(case.expect, r.stderr) and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stdout == ""
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "PWNED").exists()


def test_overrides_get_the_same_guards(tmp_path, monkeypatch):
    """-S values are YAML too: the same checks as a file (finite, ranges, aliases, duplicate keys, URLs)."""
    monkeypatch.chdir(tmp_path)
    cases = {
        "pretrain.optim.base_lr=.inf": r"pretrain\.optim\.base_lr: Input should be a finite number",
        "evaluate.ks=[0,-5]": r"evaluate\.ks\.0: Input should be greater than or equal to 1",
        "pretrain.optim={base_lr: 1, base_lr: 2}": "key 'base_lr' appears twice",
        "pretrain.data=s3://u:hunter2@b/x": r"pretrain\.data: s3://\*\*\*@b/x carries credentials",
        "pretrain.train.epochs=!!python/object/apply:os.getcwd []": "could not determine a constructor",
        "pretrain..seed=1": "empty key part",
    }
    for override, expect in cases.items():
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["config", "-S", override])
        assert code == 2 and re.search(expect, err.getvalue()), (override, err.getvalue())
        assert "hunter2" not in err.getvalue()


def test_missing_seeds_path_is_refused_before_ingest(tmp_path, monkeypatch):
    """`curate.seeds` that does not exist: a named error before the pool is read, not after."""
    from hostile.corpus import write_good

    monkeypatch.chdir(tmp_path)
    write_good(tmp_path / "pool", 3)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(
            [
                "curate",
                "-S",
                "curate.sources=[pool]",
                "-S",
                "curate.seeds=no/such/seeds",
                "-S",
                "curate.eval_sets=[]",
                "-S",
                "tracking.enabled=false",
            ]
        )
    assert code != 0 and "no/such/seeds" in err.getvalue(), err.getvalue()
    assert "curate: ingest" not in err.getvalue(), "the pool was ingested before the missing seeds were noticed"
