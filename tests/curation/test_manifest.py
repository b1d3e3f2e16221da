"""The completeness record (manifest.json): a record edited by hand is a named error, never a
KeyError or AttributeError from inside the check."""

from __future__ import annotations

import json

import pytest

from dinoflow.curation import pipeline as cp
from dinoflow.data.curated import RECORD, verify_curated
from dinoflow.errors import DinoflowError
from dinoflow.train.data import discover_units

from .conftest import tiny_cfg


def _edits(record: dict) -> dict[str, object]:
    shard = record["shards"][0]
    no_name = {k: v for k, v in shard.items() if k != "name"}
    return {
        "a list": [record],
        "a number": 3,
        "shards not a list": {**record, "shards": "shards-000000.tar"},
        "a shard without a name": {**record, "shards": [no_name]},
        "a shard as a string": {**record, "shards": ["shards-000000.tar"]},
        "bytes as text": {**record, "shards": [{**shard, "bytes": str(shard["bytes"])}]},
        "a shard in a parent folder": {**record, "shards": [{**shard, "name": "../x.tar"}]},
        "no sha256": {**record, "shards": [{**shard, "sha256": None}]},
        "samples negative": {**record, "shards": [{**shard, "samples": -1}]},
        "no manifest entry": {k: v for k, v in record.items() if k != "manifest"},
        "manifest as a list": {**record, "manifest": []},
        "remaining missing": {k: v for k, v in record.items() if k != "remaining"},
        "format as text": {**record, "format": "1"},
    }


def test_a_hand_edited_record_is_a_named_error_for_every_reader(pool, tmp_path):
    out = tmp_path / "a"
    cp.curate(tiny_cfg(pool, out))
    d = out / "curated"
    record = json.loads((d / RECORD).read_text())
    assert verify_curated(d) == record and "skipped" in record
    for what, edited in _edits(record).items():
        (d / RECORD).write_text(json.dumps(edited))
        with pytest.raises(
            DinoflowError, match=r"manifest.json is not a curation record .*rerun `dinoflow curate`"
        ) as e:
            verify_curated(d)
        assert type(e.value) is DinoflowError, what  # not a KeyError or AttributeError dressed up
        with pytest.raises(DinoflowError, match="is not a curation record"):
            discover_units(str(d))  # what pretrain runs on its data
    (d / RECORD).write_text("{not json")
    with pytest.raises(DinoflowError, match="cannot be read"):
        verify_curated(d)
    (d / RECORD).write_text(json.dumps(record))
    assert verify_curated(d, deep=True) == record
