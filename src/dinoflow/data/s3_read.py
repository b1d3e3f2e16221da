"""Reading one S3 object to its end, or failing by name: a broken stream is resumed, never taken
for the end of the object.

botocore retries a request that fails to start, not a body that breaks while it is read (the
endpoint dies, the connection resets, a read times out). `ResumableBody` counts the bytes it has
handed out and, when the body breaks, asks again from there (`Range: bytes=N-`, `If-Match` the
first answer's ETag, so the rest is of the same object), up to `attempts` times in a row with
backoff. Then it raises a `DinoflowError` naming the object, the byte and the endpoint: the
caller's stage stops (it resumes when rerun) instead of treating the object as truncated.
An object that is short *as stored* reads to its end normally; its readers judge it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from botocore.exceptions import BotoCoreError

from dinoflow.data.s3 import endpoint_url, s3_client, s3_errors
from dinoflow.errors import DinoflowError

BACKOFF_S = 0.5  # doubled after each failure in a row, at most MAX_BACKOFF_S
MAX_BACKOFF_S = 8.0


def read_attempts() -> int:
    """Attempts per broken read: the same setting as botocore's request retries."""
    return max(1, int(os.environ.get("DINOFLOW_S3_MAX_ATTEMPTS", "3")))


def _broken_read_errors() -> tuple[type[BaseException], ...]:
    from urllib3.exceptions import HTTPError

    return (BotoCoreError, HTTPError, OSError)


class ResumableBody:
    """A readable stream over s3://bucket/key (`read(n)`, `close()`) that resumes a broken read."""

    def __init__(self, bucket: str, key: str, attempts: int | None = None) -> None:
        self.bucket, self.key = bucket, key
        self.attempts = attempts or read_attempts()
        self.pos = 0
        self.size: int | None = None
        self._etag: str | None = None
        self._body: Any = None
        self._open()

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def _open(self) -> None:
        kw: dict[str, Any] = {}
        if self.pos:
            kw["Range"] = f"bytes={self.pos}-"
        if self._etag:
            kw["IfMatch"] = self._etag
        with s3_errors(self.bucket, f"reading {self.url}" + (f" from byte {self.pos}" if self.pos else "")):
            answer = s3_client().get_object(Bucket=self.bucket, Key=self.key, **kw)
        self._body = answer["Body"]
        if self._etag is None:
            self._etag = answer.get("ETag")
            self.size = answer.get("ContentLength")

    def read(self, amt: int | None = None) -> bytes:
        failures = 0
        while True:
            try:
                chunk = self._body.read(amt) if amt is not None and amt >= 0 else self._body.read()
            except _broken_read_errors() as e:
                failures += 1
                self._give_up_or_reopen(failures, e)
                continue
            self.pos += len(chunk)
            return chunk

    def _give_up_or_reopen(self, failures: int, error: BaseException) -> None:
        self._close_body()
        last: BaseException = error
        while failures < self.attempts:
            time.sleep(min(MAX_BACKOFF_S, BACKOFF_S * 2 ** (failures - 1)))
            try:
                self._open()
                return
            except DinoflowError as e:
                if "PreconditionFailed" in str(e) or "412" in str(e):
                    raise DinoflowError(
                        f"{self.url} changed while it was being read (at byte {self.pos}): rerun to read it whole"
                    ) from None
                last = e
                failures += 1
        size = f" of {self.size}" if self.size is not None else ""
        raise DinoflowError(
            f"reading {self.url} broke at byte {self.pos}{size} and failed {failures} time(s) in a row "
            f"({type(last).__name__}: {str(last)[:300]}): the S3 endpoint {endpoint_url() or 'AWS S3'} stopped "
            "answering. Nothing was skipped: rerun once it answers (set DINOFLOW_S3_MAX_ATTEMPTS for more attempts)"
        ) from None

    def _close_body(self) -> None:
        try:
            if self._body is not None:
                self._body.close()
        except Exception:  # noqa: BLE001 - closing a broken connection may fail again; it is dropped either way
            pass

    def close(self) -> None:
        self._close_body()
        self._body = None
