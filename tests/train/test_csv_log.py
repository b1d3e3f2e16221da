import csv

from dinoflow.train.loop import CsvLog


def _steps(path):
    return [int(r["step"]) for r in csv.DictReader(path.open())]


def test_appends_and_resumes_without_duplicates_or_torn_rows(tmp_path):
    p = tmp_path / "m.csv"
    log = CsvLog(p, 0)
    for s in (1, 2):
        log.add({"step": s, "loss": 1.0 / s})
    log.flush()
    log.add({"step": 3, "loss": 0.3})
    log.flush()
    assert _steps(p) == [1, 2, 3]
    with p.open("a") as f:
        f.write("4")  # a row a kill left half-written
    torn = CsvLog(p, 4)  # even a checkpoint at step 4 does not keep the torn row
    assert _steps(p) == [1, 2, 3]
    torn.flush()
    resumed = CsvLog(p, 2)  # the checkpoint covers steps 1-2: later rows go
    assert _steps(p) == [1, 2]
    resumed.add({"step": 3, "loss": 0.31})
    resumed.flush()
    rows = list(csv.DictReader(p.open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3] and rows[-1]["loss"] == "0.31"


def test_a_fresh_run_replaces_an_old_file(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("step,loss\n1,9\n2,9\n")
    log = CsvLog(p, 0)
    assert not p.exists()
    log.add({"step": 1, "loss": 1.0})
    log.flush()
    assert _steps(p) == [1]
