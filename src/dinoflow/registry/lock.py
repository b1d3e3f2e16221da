"""One gate at a time per registered model, across processes and machines, held by the registry itself.

Two registers that read the same champion, both pass, and both move the alias leave it on
whichever wrote last — possibly the worse version. The read of the champion, the verdict and the
alias move therefore run under a lock that every `dinoflow register` against the same MLflow
registry honours.

MLflow has no transactions and no compare-and-set on tags (a tag write is last-writer-wins), but
creating a registered model is an atomic create-if-absent: the name is unique in the store, and
the second of two concurrent creates fails with RESOURCE_ALREADY_EXISTS. The lock is therefore a
registered model named `<model>.gate-lock` that exists only while one register holds it (a few
requests: read the champion, register the version, move the alias), tagged with its holder.

A holder that died inside the section leaves the lock behind: a waiter that has seen the same
holder for `stale_s` breaks it (it deletes the lock only while that holder still owns it).
"""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

from dinoflow.errors import DinoflowError

LOCK_SUFFIX = ".gate-lock"
TAG_HOLDER = "dinoflow.lock.holder"
WAIT_S = 600.0  # a queue of registers each holding the lock for seconds
STALE_S = 120.0  # far beyond the few requests a holder makes
POLL_S = 0.25


def lock_name(model_name: str) -> str:
    return f"{model_name}{LOCK_SUFFIX}"


def _error_code(exc: Exception) -> str:
    return getattr(exc, "error_code", "")


def _holder(client: Any, lock: str) -> str | None:
    """The lock's holder token, or None when no lock exists."""
    from mlflow.exceptions import MlflowException

    try:
        return (client.get_registered_model(lock).tags or {}).get(TAG_HOLDER, "")
    except MlflowException as e:
        if _error_code(e) == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _delete_if_held_by(client: Any, lock: str, token: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        if _holder(client, lock) == token:
            client.delete_registered_model(lock)
    except MlflowException as e:
        if _error_code(e) != "RESOURCE_DOES_NOT_EXIST":
            raise


def _try_create(client: Any, lock: str, token: str, model_name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            lock,
            tags={TAG_HOLDER: token},
            description=f"dinoflow: held while one `dinoflow register` judges a candidate for {model_name}; "
            "not a model. Left behind only by a register that died; delete it if no register is running.",
        )
        return True
    except MlflowException as e:
        # the store answers a lost race with ALREADY_EXISTS, or with DOES_NOT_EXIST when the
        # holder released the lock between the failed insert and the store's look-up of it
        if _error_code(e) in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
            return False
        raise


@contextmanager
def gate_lock(
    client: Any, model_name: str, wait_s: float = WAIT_S, stale_s: float = STALE_S, poll_s: float = POLL_S
) -> Iterator[str]:
    """Hold the gate lock of `model_name` for the block; yields this holder's token.

    Raises DinoflowError when another holder keeps it past `wait_s` without going stale.
    """
    lock = lock_name(model_name)
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
    start = time.monotonic()
    seen, seen_since = None, start
    while not _try_create(client, lock, token, model_name):
        holder = _holder(client, lock)
        now = time.monotonic()
        if holder != seen:
            seen, seen_since = holder, now
        elif holder is not None and now - seen_since > stale_s:
            _delete_if_held_by(client, lock, holder)  # its register died inside the section
            continue
        if now - start > wait_s:
            raise DinoflowError(
                f"registering {model_name}: the gate lock (registered model {lock!r}) has been held by "
                f"{seen} for {now - start:.0f} s. Another `dinoflow register` is judging a candidate; "
                f"if none is running, delete {lock!r} in the MLflow UI and rerun"
            )
        time.sleep(poll_s * (1 + random.random()))  # jitter: waiters do not retry in lockstep
    try:
        yield token
    finally:
        _delete_if_held_by(client, lock, token)
