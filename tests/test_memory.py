"""What a process may still allocate: the process's own limits count (`ulimit -d`, as schedulers set
them), and a builder's check refuses before allocating — never on the meta device, which allocates nothing."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest
import torch

from dinoflow.memory import ModelTooLarge, available_bytes, refuse_over_memory

PROBE = "import torch; from dinoflow.memory import available_bytes; print(available_bytes(torch.device('cpu')))"


def test_the_process_data_limit_bounds_what_is_available():
    limit = 3 << 30
    r = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_DATA, (limit, limit)),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert 0 < int(r.stdout) < limit  # the limit less what the interpreter and torch already hold


def test_refusal_names_what_and_what_to_do():
    need = available_bytes(torch.device("cpu")) + (1 << 40)
    with pytest.raises(
        ModelTooLarge, match=r"^the thing needs at least [\d,.]+ GiB on cpu, .*allocated\. Make it smaller\.$"
    ):
        refuse_over_memory("the thing", need, "Make it smaller.", "cpu")
    with torch.device("meta"):
        refuse_over_memory("the thing", need, "Make it smaller.")  # nothing is allocated there
