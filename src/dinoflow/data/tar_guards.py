"""What the shard reader checks on a tar member's header before it reads any of its bytes.

tarfile trusts headers: it reads an extended header (pax records, a GNU long name) whole, and it
serves a sparse member's claimed size from a few stored bytes. `BoundedInfo` refuses an extended
header over `MAX_HEADER_BYTES`; `refusal` says why a member must not be read at all; `SeenMembers`
keeps the first of a repeated member name or key group.
"""

from __future__ import annotations

import tarfile

from dinoflow.data.limits import MAX_HEADER_BYTES, too_large


class HeaderTooLarge(tarfile.TarError):
    """An extended header (pax records, GNU long name) bigger than MAX_HEADER_BYTES."""


class BoundedInfo(tarfile.TarInfo):
    """tarfile reads an extended header whole into memory: refuse one that claims too many bytes."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED_TYPES and self.size > MAX_HEADER_BYTES:
            raise HeaderTooLarge(f"extended header of {self.size} bytes (limit {MAX_HEADER_BYTES})")
        return super()._proc_member(tarfile_)  # type: ignore[misc]  # a private TarInfo hook typeshed leaves out


_EXTENDED_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)
_MEMBER_KINDS = {
    tarfile.SYMTYPE: "symbolic link",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
}


def refusal(member: tarfile.TarInfo, max_bytes: int) -> str | None:
    """Why a member must not be read (None: read it). Checked from its header alone."""
    if member.issparse():
        return (
            f"tar member {member.name!r} is sparse (it claims {member.size} bytes from a few stored "
            "ones); sparse members are refused: repack the shard without --sparse"
        )
    if not member.isreg():
        kind = _MEMBER_KINDS.get(member.type, f"member of type {member.type!r}")
        return f"tar member {member.name!r} is a {kind}, not a regular file"
    return too_large(f"tar member {member.name!r}", member.size, max_bytes)


class SeenMembers:
    """Member names and finished keys of one shard, to keep the first of a repeat."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.keys: set[str] = set()

    def repeat(self, name: str, key: str) -> str | None:
        if name in self.names:
            return "repeated member name in the shard: the first one is kept"
        if key in self.keys:
            return (
                f"member of sample {key!r} after other samples' members (a sample's members must be consecutive): "
                "the first group is kept"
            )
        self.names.add(name)
        return None
