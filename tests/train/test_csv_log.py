import csv

from dinoflow.train.metrics import CsvLog


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


def test_rows_come_back_from_the_checkpoint_copy_when_the_file_is_gone(tmp_path):
    p, saved = tmp_path / "m.csv", tmp_path / "ckpt_metrics.csv"
    saved.write_text("step,loss\n1,0.5\n2,0.4\n3,0.3\n")  # the copy a checkpoint at step 3 took
    log = CsvLog(p, 2, saved=saved)  # e.g. DVC deleted the plot file before rerunning the stage
    assert _steps(p) == [1, 2]
    log.add({"step": 3, "loss": 0.35})
    log.flush()
    assert _steps(p) == [1, 2, 3]
