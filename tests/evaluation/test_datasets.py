"""Evaluation datasets: demo splits, labelled folders, labelled shards, subsets."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dinoflow.config import EvalDataset
from dinoflow.errors import DinoflowError
from dinoflow.evaluation.datasets import load_eval_dataset


def _png(value: int, size=(12, 10)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full(size[::-1], value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_demo_mnist_split_and_subsets():
    s = load_eval_dataset(EvalDataset(name="mnist", kind="demo_mnist"))
    assert (len(s.train), len(s.test), s.num_classes) == (4000, 1000, 10)
    small = load_eval_dataset(EvalDataset(name="mnist", kind="demo_mnist"), max_train=100, max_test=30)
    assert small.train.images.shape == (100, 28, 28) and len(small.test) == 30
    again = load_eval_dataset(EvalDataset(name="mnist", kind="demo_mnist"), max_train=100, max_test=30)
    assert np.array_equal(small.train.labels, again.train.labels)


def test_labelled_folders(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for c, v in (("cat", 10), ("dog", 200)):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{i}.png").write_bytes(_png(v))
    s = load_eval_dataset(
        EvalDataset(name="pets", kind="folder", train=str(tmp_path / "train"), test=str(tmp_path / "test"))
    )
    assert s.classes == ["cat", "dog"]
    assert s.train.labels.tolist() == [0, 0, 0, 1, 1, 1] and s.test.labels.tolist() == [0, 0, 1, 1]
    assert s.train.images.shape == (6, 10, 12, 3) and s.train.images[3, 0, 0, 0] == 200
    (tmp_path / "test" / "bird").mkdir()
    (tmp_path / "test" / "bird" / "0.png").write_bytes(_png(5))
    with pytest.raises(DinoflowError, match="bird"):
        load_eval_dataset(
            EvalDataset(name="pets", kind="folder", train=str(tmp_path / "train"), test=str(tmp_path / "test"))
        )


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DinoflowError, match="does not exist"):
        load_eval_dataset(EvalDataset(name="x", kind="folder", train=str(tmp_path / "nope"), test=str(tmp_path)))


def test_labelled_shards(tmp_path):
    from dinoflow.data.shards import write_shard

    write_shard(
        tmp_path / "train" / "shards-000000.tar",
        [(f"k{i}", _png(i * 40), "png", {"label": ["a", "b"][i % 2]}) for i in range(4)],
    )
    write_shard(tmp_path / "test" / "shards-000000.tar", [("t0", _png(7), "png", {"label": "b"})])
    s = load_eval_dataset(
        EvalDataset(name="s", kind="shards", train=str(tmp_path / "train"), test=str(tmp_path / "test"))
    )
    assert s.classes == ["a", "b"] and s.train.labels.tolist() == [0, 1, 0, 1] and s.test.labels.tolist() == [1]
    write_shard(tmp_path / "bad" / "shards-000000.tar", [("u", _png(1), "png", {})])
    with pytest.raises(DinoflowError, match="label"):
        load_eval_dataset(
            EvalDataset(name="s", kind="shards", train=str(tmp_path / "bad"), test=str(tmp_path / "test"))
        )


def test_config_requires_paths_for_files():
    with pytest.raises(ValueError, match="train"):
        EvalDataset(name="x", kind="folder")
