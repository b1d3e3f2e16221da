"""`dinoflow embed` from S3 (moto_server) when the endpoint fails mid-read, through a real TCP proxy
that resets the connection inside the shard's body: a read error is retried, then stops the run
(exit 1, resumable); only a shard truncated as stored is a skipped row."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import urllib.parse

import numpy as np
import pytest
import torch
from tcp_proxy import CuttingProxy

from dinoflow.data.shards import write_shard
from dinoflow.embedding.parts import parts_dir, read_embeddings
from dinoflow.models import build_backbone, export_backbone

from .test_embed import encode

pytestmark = pytest.mark.slow  # starts moto_server and three embed processes
N = 24
CUT_AT = 100_000  # bytes of the shard's answer passed before the reset (the shard is ~300 KB)
KEY = "faults/shard-000000.tar"


@pytest.fixture(scope="module")
def setup(s3_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("s3-faults")
    torch.manual_seed(0)
    pth = export_backbone(
        build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=1.0).eval(), root / "backbone.pth"
    )
    rng = np.random.default_rng(0)
    noise = [encode(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(N)]  # ~12 KB each
    shard = write_shard(root / "shard-000000.tar", [(f"{i:06d}", b, "png", {}) for i, b in enumerate(noise)])
    data = shard.read_bytes()
    assert len(data) > 2 * CUT_AT
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=KEY, Body=data)
    return pth, data


def _embed(pth, s3_server, endpoint: str, out, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **s3_server.env, "AWS_ENDPOINT_URL": endpoint, "DINOFLOW_S3_MAX_ATTEMPTS": "2"}
    cmd = [sys.executable, "-m", "dinoflow", "embed", str(pth), f"s3://{s3_server.bucket}/faults/", "-o", str(out)]
    cmd += ["--image-size", "28", "--resize-ratio", "1.0", "--batch-size", "2", "--part-size", "2", "--no-progress"]
    return subprocess.run(cmd + list(extra), env=env, capture_output=True, text=True, timeout=300)


def _port(endpoint: str) -> int:
    return int(urllib.parse.urlparse(endpoint).port)


def test_endpoint_dying_mid_read_fails_the_run_and_a_rerun_resumes(setup, s3_server, tmp_path):
    pth, _ = setup
    out = tmp_path / "e.parquet"
    proxy = CuttingProxy(_port(s3_server.endpoint), f"/{s3_server.bucket}/{KEY}".encode(), CUT_AT, die=True)
    try:
        r = _embed(pth, s3_server, proxy.endpoint, out)
    finally:
        proxy.close()
    assert proxy.cut == 1, "the proxy never cut the shard's answer"
    assert r.returncode == 1, f"a broken read must fail the run (exit {r.returncode}): {r.stdout[-500:]}"
    assert f"reading s3://{s3_server.bucket}/{KEY} broke at byte" in r.stderr, r.stderr[-2000:]
    assert "Nothing was skipped: rerun once it answers" in r.stderr
    assert not out.exists() and list(parts_dir(out).glob("part-*.parquet")), "rows before the break stay committed"
    again = _embed(pth, s3_server, s3_server.endpoint, out)
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads(again.stdout)
    assert summary["resumed_rows"] > 0 and summary["rows"] == N and summary["skipped"] == 0
    assert read_embeddings(out)[0] == [f"shard-000000.tar/{i:06d}" for i in range(N)]


def test_a_connection_reset_once_is_resumed_where_it_broke(setup, s3_server, tmp_path):
    pth, _ = setup
    proxy = CuttingProxy(_port(s3_server.endpoint), f"/{s3_server.bucket}/{KEY}".encode(), CUT_AT, cuts=1)
    try:
        r = _embed(pth, s3_server, proxy.endpoint, tmp_path / "e.parquet")
    finally:
        proxy.close()
    assert proxy.cut == 1, "the proxy never cut the shard's answer"
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    assert summary["rows"] == N and summary["skipped"] == 0
    direct = _embed(pth, s3_server, s3_server.endpoint, tmp_path / "direct.parquet")
    assert direct.returncode == 0, direct.stderr[-2000:]
    a, b = read_embeddings(tmp_path / "e.parquet"), read_embeddings(tmp_path / "direct.parquet")
    assert a[0] == b[0] and np.array_equal(a[1], b[1])


def test_a_shard_truncated_as_stored_is_a_skipped_row(setup, s3_server, tmp_path):
    pth, data = setup
    cut = data[: len(data) * 6 // 10]
    s3_server.client().put_object(Bucket=s3_server.bucket, Key="truncated/shard-000000.tar", Body=cut)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        whole = {m.name.split(".")[0] for m in tf.getmembers() if m.offset_data + m.size <= len(cut)}
    env = {**os.environ, **s3_server.env}
    cmd = [sys.executable, "-m", "dinoflow", "embed", str(pth), f"s3://{s3_server.bucket}/truncated/"]
    cmd += ["-o", str(tmp_path / "t.parquet"), "--image-size", "28", "--resize-ratio", "1.0", "--no-progress"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    uids = read_embeddings(tmp_path / "t.parquet")[0]
    assert uids == [f"shard-000000.tar/{k}" for k in sorted(whole)][: len(uids)] and len(uids) >= len(whole) - 1
    skipped = json.loads((tmp_path / "t.skipped.json").read_text())
    assert [s["uid"] for s in skipped] == ["shard-000000.tar"]
    assert skipped[0]["reason"].startswith("truncated: the shard ends inside a member as stored")
