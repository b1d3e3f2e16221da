"""Byte limits on what one untrusted input may make a reader hold in memory.

A reader checks an input's size from what it can see before reading it (a file's `fstat`, a tar
member's header, an object's first bytes beyond the limit) and refuses it unread, so a 1 GiB
"PNG" or a tar member whose header claims 3 GiB costs nothing. A refused input becomes an item
with a reason that starts with `TOO_LARGE` (curation reports it as `corrupt: too_large: ...`).
"""

from __future__ import annotations

from dinoflow.config import MAX_FILE_BYTES

__all__ = ["MAX_FILE_BYTES", "MAX_HEADER_BYTES", "TOO_LARGE", "too_large"]
MAX_HEADER_BYTES = 1 * 2**20  # one tar extended header (pax record set, GNU long name)
TOO_LARGE = "too_large"


def too_large(what: str, size: int, limit: int) -> str | None:
    """The refusal reason when `size` bytes exceed `limit` (None when they fit)."""
    if size <= limit:
        return None
    return f"{TOO_LARGE}: {what} is {size} bytes, over the per-file limit of {limit} bytes (max_file_bytes)"
