"""A family of students on disk: `<out_dir>/<name>/backbone.pth`, one folder per student, which
`dinoflow distill` writes when `distill.students` lists several. `evaluate` and `register` take a
family's folder wherever they take one student's."""

from __future__ import annotations

from pathlib import Path


def student_folders(path: str | Path) -> dict[str, Path]:
    """{name: folder} of the students under `path`; {} when `path` is one model (a .pth, or a folder
    with its own backbone.pth) or holds no student folder. `<folder>/backbone.pth` that does not exist
    stands for `<folder>` (the settings name the one-student file)."""
    p = Path(path)
    if p.name == "backbone.pth" and not p.exists():
        p = p.parent
    if not p.is_dir() or (p / "backbone.pth").exists():
        return {}
    return {d.name: d for d in sorted(p.iterdir()) if d.is_dir() and (d / "backbone.pth").is_file()}
