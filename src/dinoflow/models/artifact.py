"""A trained backbone on disk: `backbone.pth` (+ `config.yaml` beside it), as pretrain and distill write it.

Every stage that takes a backbone takes either the file or the folder that holds it. Opening one
is one rule in one place (`BackboneArtifact.open`): a folder means `<folder>/backbone.pth`, a path
with no suffix that does not exist yet means the same (a stage's `out_dir` before the stage ran),
anything else is the file itself. A missing file is a `DinoflowError` naming the file looked for
and what to do, before any work starts.

The module and the digest are each computed at most once per artifact: a stage that needs the
backbone in several places (register: ONNX export, the MLflow model, the model card) shares one
`BackboneArtifact` and so one load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dinoflow.digest import file_sha256
from dinoflow.errors import DinoflowError
from dinoflow.models.vit import DinoVisionTransformer
from dinoflow.models.weights import BACKBONE_FILE, CONFIG_FILE, load_backbone

MISSING = (
    "backbone {path} not found: give a backbone.pth (or the folder that holds it), or run the stage that writes it"
)


class BackboneNotFound(DinoflowError):
    """No backbone file where a path points; `path` is the file that was looked for."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


def backbone_file(path: str | Path) -> Path:
    """The backbone file a user path names (not checked): `<folder>/backbone.pth` for a folder or a
    suffix-less path that does not exist, else the path itself."""
    p = Path(path)
    if p.is_dir() or (not p.suffix and not p.exists()):
        return p / BACKBONE_FILE
    return p


@dataclass(frozen=True)
class BackboneArtifact:
    """An existing backbone file. Build it with `open`; `load()` and `sha256()` read the file once."""

    path: Path
    _cache: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    @classmethod
    def open(cls, path: str | Path, missing: str = MISSING) -> BackboneArtifact:
        """The backbone a user path names (a `.pth` or its folder); `BackboneNotFound` when absent.

        `missing` is the message, with `{path}` standing for the file looked for (a plain string, not
        a format string: braces elsewhere stay as written): each stage says what produces the file
        and which setting points at it.
        """
        pth = backbone_file(path)
        if not pth.is_file():
            raise BackboneNotFound(missing.replace("{path}", str(pth)), pth)
        return cls(pth)

    @property
    def folder(self) -> Path:
        """Where the file lies, with `config.yaml` (and for a stage's output, its train_config.yaml)."""
        return self.path.parent

    @property
    def config_path(self) -> Path:
        """The `config.yaml` beside the weights (it may be absent: the architecture is then inferred)."""
        return self.folder / CONFIG_FILE

    def load(self, **overrides: Any) -> DinoVisionTransformer:
        """The backbone in eval mode (`dinoflow.models.load_backbone`), built once per set of overrides.

        Every caller gets the same module: a caller that changes it (moves it to a device, trains
        it) must be its only user.
        """
        key = ("load", tuple(sorted(overrides.items())))
        if key not in self._cache:
            self._cache[key] = load_backbone(self.path, **overrides)
        return self._cache[key]

    def sha256(self) -> str:
        """sha256 hex digest of the weights file (read once)."""
        if "sha256" not in self._cache:
            self._cache["sha256"] = file_sha256(self.path)
        return self._cache["sha256"]
