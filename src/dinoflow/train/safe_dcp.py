"""Reading a `torch.distributed.checkpoint` (DCP) directory without running code from it.

DCP's own reader unpickles `.metadata` with plain `pickle.load`, and its default planner reads
the non-tensor entries (optimiser hyper-parameters) with `torch.load(weights_only=False)`: a
crafted checkpoint directory runs arbitrary code on resume. Here
- `.metadata` goes through an unpickler that only builds DCP's own metadata classes and the few
  torch values they hold (`torch.Size`, dtypes, layouts), and every shard file it names must lie
  inside the checkpoint directory;
- non-tensor entries are read with `torch.load(weights_only=True)` (DCP already reads tensors so).
Anything else is a `CheckpointError` naming the file. Writing is plain DCP, so a checkpoint
still resumes on another world size and stays readable by stock DCP tools.
"""

from __future__ import annotations

import enum
import io
import pickle
from pathlib import Path, PurePath
from typing import Any

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from dinoflow.errors import DinoflowError

_METADATA_MODULE = "torch.distributed.checkpoint.metadata"
_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        (_METADATA_MODULE, n)
        for n in (
            "Metadata",
            "TensorStorageMetadata",
            "BytesStorageMetadata",
            "ChunkStorageMetadata",
            "TensorProperties",
            "_MEM_FORMAT_ENCODING",
            "MetadataIndex",
            "StorageMeta",
        )
    }
    | {
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("pathlib", "PosixPath"),
        ("pathlib", "PurePosixPath"),
        ("collections", "OrderedDict"),
    }
)


class CheckpointError(DinoflowError):
    """A checkpoint directory holds something other than what dinoflow writes."""


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file, where: Path) -> None:
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if (module, name) == ("builtins", "getattr"):
            return self._enum_member
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise CheckpointError(
            f"{self.where} refers to {module}.{name}, which a checkpoint's metadata never holds: refusing to "
            "load it (a crafted file could run code). Delete this checkpoint directory or restore it from a "
            "trusted copy; set train.restart=true to start over"
        )

    def _enum_member(self, cls: Any, name: Any) -> Any:
        """Some Python 3.11 releases (3.11.2, Debian bookworm's) pickle an Enum member as
        `getattr(EnumClass, "NAME")`: honest metadata from such an interpreter holds that call. It is
        answered only for a member of an allowed Enum (the class itself came through find_class)."""
        if isinstance(cls, type) and issubclass(cls, enum.Enum) and isinstance(name, str) and name in cls.__members__:
            return cls[name]
        raise CheckpointError(
            f"{self.where} calls getattr({getattr(cls, '__name__', type(cls).__name__)}, {name!r}), which is no "
            "member of an enumeration a checkpoint's metadata holds: refusing to load it (a crafted file could "
            "run code). Delete this checkpoint directory or restore it from a trusted copy; set "
            "train.restart=true to start over"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(f"{self.where} uses pickle persistent ids, which checkpoint metadata never does")


def read_metadata(path: Path) -> Metadata:
    """Unpickle `path` (a DCP `.metadata` file) with the allow-list; check the shard paths it names."""
    try:
        with open(path, "rb") as f:
            md = _MetadataUnpickler(f, path).load()
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any malformed pickle is the same problem for the user
        raise CheckpointError(
            f"{path} is not readable checkpoint metadata ({type(e).__name__}: {e}); "
            "delete this checkpoint directory, or set train.restart=true to start over"
        ) from None
    if not isinstance(md, Metadata):
        raise CheckpointError(f"{path} holds a {type(md).__name__}, not DCP checkpoint metadata")
    for info in (md.storage_data or {}).values():
        rel = PurePath(str(getattr(info, "relative_path", "")))
        if rel.is_absolute() or len(rel.parts) != 1 or rel.name in ("", ".", ".."):
            raise CheckpointError(f"{path} names a shard outside its directory ({str(rel)!r}); refusing to read it")
    return md


class SafeFileSystemReader(FileSystemReader):
    """`FileSystemReader` whose metadata is read with the allow-listed unpickler.

    Call `read_metadata(<dir>/.metadata)` first and pass the result as `metadata`: DCP prints and
    re-wraps errors raised inside its own `read_metadata` call, which buries the message.
    """

    def __init__(self, path: str | Path, metadata: Metadata | None = None) -> None:
        super().__init__(path)
        self._checked = metadata

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        md = self._checked if self._checked is not None else read_metadata(Path(str(self.path)) / ".metadata")
        storage_meta = getattr(md, "storage_meta", None) or StorageMeta()
        storage_meta.load_id = self.load_id
        md.storage_meta = storage_meta
        return md


class SafeLoadPlanner(DefaultLoadPlanner):
    """`DefaultLoadPlanner` that reads non-tensor entries with `torch.load(weights_only=True)`."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            # torch's message advises weights_only=False, the one thing not to do here: keep its gist
            gist = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln), type(e).__name__)
            raise CheckpointError(
                f"checkpoint entry {fqn!r} is not plain data ({gist}): refusing to load it. "
                "Delete this checkpoint directory, or set train.restart=true to start over"
            ) from None
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj
