"""The demo's summary: the gate's verdict and the champion's URI, read back from registry.json."""

from __future__ import annotations

from dinoflow.demo import registry_lines


def test_summary_prints_the_champion_uri():
    reg = {
        "registered": True,
        "version": "1",
        "model_uri": "models:/dinoflow-student/1",
        "took_alias": True,
        "alias": "champion",
        "alias_version": "1",
        "alias_uri": "models:/dinoflow-student@champion",
        "champion_uri": "models:/dinoflow-student@champion",
        "gate": {"passed": True, "reasons": []},
    }
    text = "\n".join(registry_lines(reg))
    assert "registry gate: PASSED" in text and "this run:  models:/dinoflow-student/1  (took the alias)" in text
    assert "champion:  models:/dinoflow-student@champion  (version 1)" in text
    assert "dinoflow embed models:/dinoflow-student@champion" in text


def test_summary_of_a_candidate_that_did_not_take_the_alias():
    reg = {
        "registered": True,
        "version": "2",
        "model_uri": "models:/m/2",
        "took_alias": False,
        "alias": "champion",
        "alias_version": "1",
        "alias_uri": "models:/m@champion",
        "gate": {"passed": False, "reasons": ["retention 0.8 < min_retention 0.95"]},
    }
    text = "\n".join(registry_lines(reg))
    assert "registry gate: NOT PASSED  retention 0.8 < min_retention 0.95" in text
    assert "(registered as a candidate)" in text and "champion:  models:/m@champion  (version 1)" in text
    first_failure = {**reg, "alias_version": None, "alias_uri": None}
    assert "champion:  none yet (alias 'champion' unset)" in "\n".join(registry_lines(first_failure))
    assert registry_lines({}) == []
