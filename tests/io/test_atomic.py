"""phf.io.atomic: a file is replaced whole, or left as it was."""

import pytest

from phf.io.atomic import atomic_path, write_text_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "out" / "eval.json"
    write_text_atomic(path, "old")  # creates the missing directory
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and [p.name for p in path.parent.iterdir()] == ["eval.json"]
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and path.stat().st_mode & 0o777 == 0o644
