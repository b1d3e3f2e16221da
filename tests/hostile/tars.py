"""Hostile tar shards and oversized files, built at test time (no binaries in git).

Each builder returns the bytes of a small tar (or writes a file) that attacks the shard reader:
a sparse member whose header claims gigabytes, an extended header that claims gigabytes, member
names repeated, a symlink member named like an image, and a valid PNG padded to 1 GiB (a sparse
file on disk, so it costs no disk space).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

GIB = 2**30


def _octal(value: int, width: int) -> bytes:
    return f"{value:0{width - 1}o}".encode() + b"\0"


def _member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data))


def gnu_sparse_header(name: str, claimed: int, stored: bytes) -> bytes:
    """One GNU sparse ('S') member: `stored` bytes at offset 0 of a file that claims `claimed` bytes.

    Python's tarfile reads such members but does not write them, so the header is patched by hand
    (the old-GNU sparse map: 4 (offset, size) pairs at byte 386, the real size at byte 483).
    """
    ti = tarfile.TarInfo(name)
    ti.size = len(stored)
    ti.type = tarfile.GNUTYPE_SPARSE
    buf = bytearray(ti.tobuf(format=tarfile.GNU_FORMAT))
    head = len(buf) - tarfile.BLOCKSIZE  # a long name adds blocks in front
    block = buf[head:]
    block[386:398] = _octal(0, 12)
    block[398:410] = _octal(len(stored), 12)
    block[482] = 0
    block[483:495] = _octal(claimed, 12)
    block[148:156] = b"        "
    block[148:156] = _octal(sum(block), 7) + b" "
    buf[head:] = block
    pad = (-len(stored)) % tarfile.BLOCKSIZE
    return bytes(buf) + stored + b"\0" * pad


def sparse_bomb_tar(good: bytes, claimed: int = 3 * GIB) -> bytes:
    """A ~10 KB tar: a good sample, then `bomb.png`, a sparse member claiming `claimed` bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        _member(tf, "000001.png", good)
        tf.fileobj.write(gnu_sparse_header("bomb.png", claimed, b"\x89PNG" + b"\0" * 4092))
        tf.offset = tf.fileobj.tell()
        _member(tf, "000002.png", good)
    return buf.getvalue()


def pax_header_bomb_tar(good: bytes, claimed: int = 3 * GIB) -> bytes:
    """A tar whose second header is a pax extended header claiming `claimed` bytes (it holds 1 KB)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        _member(tf, "000001.png", good)
    body = buf.getvalue().rstrip(b"\0")
    body += b"\0" * ((-len(body)) % tarfile.BLOCKSIZE)
    ti = tarfile.TarInfo("././@PaxHeader")
    ti.type = tarfile.XHDTYPE
    ti.size = claimed
    return body + ti.tobuf(format=tarfile.USTAR_FORMAT) + b"1 x\n" * 256 + b"\0" * 1024


def repeated_names_tar(pngs: list[bytes]) -> bytes:
    """`a.png`, `b.png`, `a.png` again, `a.json` after `b`'s group, `c.png`, `c.png` again."""
    a, b, c, a2, c2 = pngs[:5]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (
            ("a.png", a),
            ("b.png", b),
            ("a.png", a2),
            ("a.json", b'{"label": 1}'),
            ("c.png", c),
            ("c.png", c2),
        ):
            _member(tf, name, data)
    return buf.getvalue()


def symlink_member_tar(good: bytes) -> bytes:
    """A good sample and `link.png`, a symlink member pointing at /etc/passwd."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        _member(tf, "000001.png", good)
        ti = tarfile.TarInfo("link.png")
        ti.type = tarfile.SYMTYPE
        ti.linkname = "/etc/passwd"
        tf.addfile(ti)
    return buf.getvalue()


def padded_png(path: Path, good: bytes, size: int = GIB) -> None:
    """A valid PNG followed by zeros up to `size` bytes (a sparse file: no disk space used)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(good)
        f.truncate(size)


def tar_cases(pngs: list[bytes]) -> dict[str, tuple[bytes, int]]:
    """Every hostile tar of this module built from real PNGs: {file name: (bytes, good samples in it)}."""
    return {
        "sparse_member.tar": (sparse_bomb_tar(pngs[0]), 2),
        "pax_header_3gib.tar": (pax_header_bomb_tar(pngs[1]), 1),
        "repeated_names.tar": (repeated_names_tar(pngs[2:7]), 3),
        "symlink_member.tar": (symlink_member_tar(pngs[7]), 1),
    }
