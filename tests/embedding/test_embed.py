"""`dinoflow embed`: a backbone file (or registry URI, see tests/registry/test_serving.py) + a folder,
tar shards or an S3 prefix → Parquet of (uid, embedding); bad images reported and skipped; resumable."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from dinoflow.cli import main
from dinoflow.data.shards import write_shard
from dinoflow.embedding.parts import PartStore, parts_dir, read_embeddings
from dinoflow.errors import DinoflowError
from dinoflow.evaluation.transform import eval_transform
from dinoflow.models import build_backbone, export_backbone

SIZE = 28


def encode(a: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


def pictures(n: int, seed: int = 0) -> list[np.ndarray]:
    """Grey and RGB images of a few sizes (the transform resizes and crops them)."""
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, 256, (SIZE + i % 3, SIZE + i % 5) + (() if i % 2 else (3,)), dtype=np.uint8) for i in range(n)
    ]


def reference(backbone: torch.nn.Module, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The definition: eval transform → x_norm_clstoken / mean x_norm_patchtokens → L2-normalised."""
    x = eval_transform(images, image_size=SIZE, resize_ratio=1.0)
    with torch.no_grad():
        out = backbone.forward_features(x)
    norm = torch.nn.functional.normalize
    return norm(out["x_norm_clstoken"], dim=-1).numpy(), norm(out["x_norm_patchtokens"].mean(1), dim=-1).numpy()


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    torch.manual_seed(0)
    model = build_backbone("vit_pico", patch_size=7, img_size=SIZE, layerscale_init=1.0).eval()
    path = export_backbone(model, tmp_path_factory.mktemp("model") / "backbone.pth")
    return model, path


def embed(*args: str) -> int:
    return main(["embed", *map(str, args), "--image-size", str(SIZE), "--resize-ratio", "1.0", "--no-progress"])


def test_folder_with_a_corrupt_image_and_a_stray_file(backbone, tmp_path, capsys):
    model, pth = backbone
    imgs = pictures(7)
    src = tmp_path / "images"
    (src / "sub").mkdir(parents=True)
    names = []
    for i, a in enumerate(imgs):
        name = f"sub/img_{i}.jpg" if i == 3 else f"img_{i}.png"
        (src / name).write_bytes(encode(a, "JPEG" if i == 3 else "PNG"))
        names.append(name)
    (src / "broken.png").write_bytes(encode(imgs[0])[:60])  # truncated
    (src / "notes.txt").write_text("not an image")
    assert embed(pth, src, "-o", tmp_path / "out.parquet", "--pooled-patch-tokens", "--batch-size", "3") == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["rows"] == 7 and summary["skipped"] == 1 and summary["other_files"] == 1 and summary["dim"] == 64
    assert "skipped 1 bad image(s)" in captured.err
    skipped = json.loads((tmp_path / "out.skipped.json").read_text())
    assert [s["uid"] for s in skipped] == ["broken.png"] and skipped[0]["reason"].startswith("truncated")
    uids, emb = read_embeddings(tmp_path / "out.parquet")
    _, pooled = read_embeddings(tmp_path / "out.parquet", "pooled_patch_tokens")
    assert uids == sorted(names)  # the input order: sorted relative paths
    decoded = [np.array(Image.open(src / u).convert("RGB")) for u in uids]
    cls_ref, pooled_ref = reference(model, decoded)
    np.testing.assert_allclose(emb, cls_ref, atol=1e-5)
    np.testing.assert_allclose(pooled, pooled_ref, atol=1e-5)
    assert not parts_dir(tmp_path / "out.parquet").exists(), "parts are removed once the file is complete"


def test_tar_shards(backbone, tmp_path, capsys):
    model, pth = backbone
    imgs = pictures(5, seed=1)
    shards = tmp_path / "shards"
    shards.mkdir()
    write_shard(shards / "shard-000000.tar", [(f"{i:06d}", encode(a), "png", {}) for i, a in enumerate(imgs[:3])])
    write_shard(
        shards / "shard-000001.tar",
        [(f"{i:06d}", encode(a), "png", {}) for i, a in enumerate(imgs[3:], 3)]
        + [("000009", b"\x89PNG junk", "png", {})],
    )
    assert embed(pth, shards, "-o", tmp_path / "s.parquet") == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 1
    uids, emb = read_embeddings(tmp_path / "s.parquet")
    assert uids == [f"shard-00000{0 if i < 3 else 1}.tar/{i:06d}" for i in range(5)]
    np.testing.assert_allclose(
        emb, reference(model, [np.array(Image.open(io.BytesIO(encode(a))).convert("RGB")) for a in imgs])[0], atol=1e-5
    )


@pytest.mark.slow
def test_s3_prefix_on_moto(backbone, tmp_path, monkeypatch, s3_server, capsys):
    model, pth = backbone
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    client = s3_server.client()
    imgs = pictures(4, seed=2)
    for i, a in enumerate(imgs):
        client.put_object(Bucket=s3_server.bucket, Key=f"embed-test/raw/{i}.png", Body=encode(a))
    client.put_object(Bucket=s3_server.bucket, Key="embed-test/raw/bad.png", Body=b"nope")
    assert embed(pth, f"s3://{s3_server.bucket}/embed-test/raw/", "-o", tmp_path / "e.parquet") == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 1
    uids, emb = read_embeddings(tmp_path / "e.parquet")
    assert uids == [f"{i}.png" for i in range(4)]
    decoded = [np.array(Image.open(io.BytesIO(encode(a))).convert("RGB")) for a in imgs]
    np.testing.assert_allclose(emb, reference(model, decoded)[0], atol=1e-5)


@pytest.mark.slow
def test_kill_and_resume_gives_the_uninterrupted_result(backbone, tmp_path):
    _, pth = backbone
    src = tmp_path / "images"
    src.mkdir()
    for i, a in enumerate(pictures(120, seed=3)):
        (src / f"{i:04d}.png").write_bytes(encode(a))
    cmd = [
        sys.executable,
        "-m",
        "dinoflow",
        "embed",
        str(pth),
        str(src),
        "--image-size",
        "84",
        "--resize-ratio",
        "1.0",
        "--batch-size",
        "4",
        "--part-size",
        "8",
        "--no-progress",
    ]
    killed = tmp_path / "killed.parquet"
    proc = subprocess.Popen(cmd + ["-o", str(killed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    parts = parts_dir(killed)
    deadline = time.monotonic() + 120
    while len(list(parts.glob("part-*.parquet"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; give it more images"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not killed.exists() and len(list(parts.glob("part-*.parquet"))) >= 3
    r = subprocess.run(cmd + ["-o", str(killed)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    assert summary["resumed_rows"] >= 24 and summary["resumed_rows"] + summary["embedded_now"] == 120
    full = tmp_path / "full.parquet"
    assert subprocess.run(cmd + ["-o", str(full)], capture_output=True, timeout=600).returncode == 0
    uids_a, emb_a = read_embeddings(killed)
    uids_b, emb_b = read_embeddings(full)
    assert uids_a == uids_b == [f"{i:04d}.png" for i in range(120)]
    np.testing.assert_allclose(emb_a, emb_b, atol=1e-6)


def test_resume_refuses_other_settings_and_restart_discards(backbone, tmp_path, capsys):
    _, pth = backbone
    src = tmp_path / "images"
    src.mkdir()
    (src / "a.png").write_bytes(encode(pictures(1)[0]))
    out = tmp_path / "out.parquet"
    PartStore(out, {"model_sha256": "another model", "format": 1})  # a partial run of another model
    assert embed(pth, src, "-o", out) == 1
    assert "holds a partial run with other settings (image_size, input, model_sha256" in capsys.readouterr().err
    assert embed(pth, src, "-o", out, "--restart") == 0 and out.exists()
    capsys.readouterr()
    assert embed(pth, src, "-o", out) == 1
    assert f"{out} exists (a finished output); pass --overwrite" in capsys.readouterr().err
    assert embed(pth, src, "-o", out, "--overwrite") == 0


def test_bad_arguments_are_named(backbone, tmp_path, capsys):
    _, pth = backbone
    (tmp_path / "empty").mkdir()
    cases = [
        ((pth, tmp_path / "empty", "-o", tmp_path / "o.parquet"), "holds no images"),
        ((tmp_path / "missing.pth", tmp_path / "empty", "-o", tmp_path / "o.parquet"), "no such backbone file"),
        ((pth, tmp_path / "nowhere", "-o", tmp_path / "o.parquet"), "does not exist"),
        ((pth, tmp_path / "empty", "-o", tmp_path / "o.parquet", "--batch-size", "0"), "--batch-size"),
        ((pth, tmp_path / "empty", "-o", tmp_path), "is a directory"),
    ]
    for args, message in cases:
        assert embed(*args) == 1, message
        assert message in capsys.readouterr().err
    assert not parts_dir(tmp_path / "o.parquet").exists()


def test_a_source_of_only_skipped_files_names_them(backbone, tmp_path, capsys):
    # the refusal lists the skipped files by path (they are recorded as {"path", "reason"} rows)
    _, pth = backbone
    src = tmp_path / "notes"
    src.mkdir()
    (src / "readme.txt").write_text("not an image")
    assert embed(pth, src, "-o", tmp_path / "o.parquet") == 1
    err = capsys.readouterr().err
    assert "holds no images (readme.txt" in err, err
    assert not parts_dir(tmp_path / "o.parquet").exists()


def test_part_store_round_trip(tmp_path):
    store = PartStore(tmp_path / "x.parquet", {"format": 1})
    store.write_part(["a", "b"], {"embedding": np.eye(2, 3, dtype=np.float32)}, [{"uid": "c", "reason": "empty"}])
    again = PartStore(tmp_path / "x.parquet", {"format": 1})
    assert again.done() == ({"a", "b", "c"}, 2, [{"uid": "c", "reason": "empty"}])
    assert again.finish({"dim": 3}) == {"rows": 2, "skipped": 1, "skipped_file": str(tmp_path / "x.skipped.json")}
    uids, emb = read_embeddings(tmp_path / "x.parquet")
    assert uids == ["a", "b"] and np.array_equal(emb, np.eye(2, 3, dtype=np.float32))
    with pytest.raises(DinoflowError, match="no image could be embedded"):
        PartStore(tmp_path / "y.parquet", {"format": 1}).finish({})
