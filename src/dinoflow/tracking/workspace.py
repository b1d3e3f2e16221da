"""A local tracking store named by a relative path, seen from DVC's temporary experiment workspaces.

`dvc exp run --temp` and queued experiments (`dvc exp run --queue`, then `dvc queue start` or
`dvc exp run --run-all`) run the stages in a copy of the project under
`<project>/.dvc/tmp/exps/…/`, which DVC deletes afterwards. A relative store
(`sqlite:///mlflow.db`, the default) would be created inside that copy: the run would register
"version 1" into a database that is then deleted, while the project's registry never hears of it.
So a relative store path means the project's store: it is resolved against the project the
temporary workspace copies, at the same place relative to the project root.
"""

from __future__ import annotations

from pathlib import Path

EXPS = (".dvc", "tmp", "exps")  # where DVC puts its temporary experiment workspaces


def dvc_temp_workspace(cwd: Path) -> tuple[Path, Path] | None:
    """(the temporary workspace's project root, the project it copies) when `cwd` lies in one."""
    parts = cwd.parts
    starts = [i for i in range(len(parts) - len(EXPS)) if parts[i : i + len(EXPS)] == EXPS]
    if not starts:
        return None
    project = Path(*parts[: starts[-1]])
    exps = project.joinpath(*EXPS)
    for root in (cwd, *cwd.parents):
        if root == exps:
            break
        if (root / ".dvc").is_dir():  # the copy's own project root (it has its own .dvc/)
            return root, project
    return None


def _local_path(uri: str) -> tuple[str, str] | None:
    """(scheme prefix, path) of a local store URI, or None for a remote one."""
    for prefix in ("sqlite:///", "file://", "file:"):
        if uri.startswith(prefix):
            return prefix, uri[len(prefix) :]
    return None if "://" in uri else ("", uri)


def resolve_store(uri: str, cwd: Path | None = None) -> str:
    """`uri` with a relative local path resolved against the project when `cwd` (default: the
    working directory) lies in a DVC temporary experiment workspace; otherwise `uri` unchanged."""
    local = _local_path(uri)
    if local is None or not local[1] or Path(local[1]).is_absolute():
        return uri
    cwd = (cwd or Path.cwd()).resolve()
    found = dvc_temp_workspace(cwd)
    if found is None:
        return uri
    temp_root, project = found
    prefix, path = local
    resolved = project / cwd.relative_to(temp_root) / path
    return f"{prefix}{resolved}" if prefix != "file:" else f"file://{resolved}"
