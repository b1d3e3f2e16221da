"""Failed writes as named errors: the path is named, and the cause is the real one."""

from __future__ import annotations

import errno

from dinoflow.errors import full_disk_error, output_dir_problem, storage_error


def test_a_virtual_file_system_is_not_reported_as_a_full_disk():
    # /proc shows 0 bytes free: a failed write there is not "no space left"
    exc = FileNotFoundError(errno.ENOENT, "No such file or directory", "/proc/dinoflow/out")
    assert full_disk_error(exc, ["/proc/dinoflow/out"]) is None
    assert "virtual file system" in output_dir_problem("/proc/dinoflow/out")


def test_a_file_in_the_output_path_is_named(tmp_path):
    exc = NotADirectoryError(errno.ENOTDIR, "Not a directory", "/dev/null/x/.curate/parts")
    named = storage_error(exc)
    assert named is not None and "a part of /dev/null/x/.curate/parts is a file, not a folder" in str(named)
    assert output_dir_problem("/dev/null/x") == "/dev/null in its path is not a folder"
    (tmp_path / "f").write_text("x")
    assert output_dir_problem(tmp_path / "f") == f"{tmp_path / 'f'} is not a folder"
    assert output_dir_problem(tmp_path / "new" / "deeper") is None  # missing folders are created later
