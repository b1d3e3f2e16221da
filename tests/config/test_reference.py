"""The configuration reference generator: `--write` replaces exactly the block between the markers
of docs/configuration.md and keeps the hand-written prose around it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dinoflow.config.reference import BEGIN, END, PAGE, reference_markdown, write_reference

ROOT = Path(__file__).resolve().parents[2]


def test_write_replaces_a_stale_block_and_keeps_the_prose(tmp_path):
    page = tmp_path / "configuration.md"
    stale = reference_markdown().replace("| `seed` |", "| `seed_renamed` |").replace("`0`", "`1`", 1)
    page.write_text(f"# Configuration reference\n\nintro\n\n{stale}\n\nafter\n")
    assert stale != reference_markdown()
    write_reference(page)
    assert page.read_text() == f"# Configuration reference\n\nintro\n\n{reference_markdown()}\n\nafter\n"


def test_write_refuses_a_page_without_the_markers(tmp_path):
    page = tmp_path / "configuration.md"
    page.write_text(f"# Configuration reference\n\n{BEGIN}\nno end marker\n")
    with pytest.raises(ValueError, match="lacks the reference markers"):
        write_reference(page)
    assert END not in page.read_text()  # nothing written


def test_the_command_writes_docs_configuration_md_by_default(tmp_path):
    """`python -m dinoflow.config.reference --write` from the repository root targets docs/configuration.md."""
    assert (ROOT / PAGE).exists()
    (tmp_path / "docs").mkdir()
    (tmp_path / PAGE).write_text(f"prose\n{BEGIN}\nold\n{END}\n")
    subprocess.run(
        [sys.executable, "-m", "dinoflow.config.reference", "--write"],
        cwd=tmp_path,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        timeout=120,
    )
    assert (tmp_path / PAGE).read_text() == f"prose\n{reference_markdown()}\n"
