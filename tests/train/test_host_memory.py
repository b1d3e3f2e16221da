"""Freed host memory kept for the next step (glibc malloc): no fresh pages for a repeated allocation."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dinoflow.train.host_memory import glibc

_PROBE = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from dinoflow.train.host_memory import keep_freed_host_memory
    assert keep_freed_host_memory()
def faults_of(n):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(n // 4)
    t.fill_(1.0)  # touch every page
    del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of(64 * 2**20)  # over glibc's largest mmap threshold (32 MiB)
print(faults_of(48 * 2**20))  # a smaller buffer after it: the freed pages, or fresh ones?
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(glibc() is None, reason="mallopt is glibc's; other C libraries are left as they are")
def test_a_freed_buffer_is_reused_without_page_faults():
    pages = 48 * 2**20 // 4096
    assert _faults("default") > pages // 2  # the default: a fresh mapping, every page faulted
    assert _faults("keep") < pages // 20  # kept: the first buffer's pages, already touched


def test_the_training_loop_keeps_freed_memory_on_a_cpu(tiny_cfg, monkeypatch):
    import dinoflow.train.loop as loop
    from dinoflow.train.pretrain import pretrain

    calls = []
    monkeypatch.setattr(loop, "keep_freed_host_memory", lambda: calls.append(True) or True)
    assert pretrain(tiny_cfg("pretrain.train.max_steps=1"))["step"] == 1
    assert calls == [True]
