"""KServe's storage initializer for models:/ URIs refuses what it cannot fetch, before any request
(the download itself runs against a real MLflow server in tests/k8s/test_kserve_serving.py)."""

from __future__ import annotations

from dinoflow.launch.fetch_model import main


def test_wrong_arguments_are_named(tmp_path, capsys):
    assert main(["models:/x@champion"]) == 2
    assert "usage" in capsys.readouterr().err
    assert main(["s3://bucket/model", str(tmp_path / "m")]) == 1
    assert "not a registered model URI" in capsys.readouterr().err
    assert main(["models:/", str(tmp_path / "m")]) == 1
    assert not (tmp_path / "m").exists()
