"""fsutil's single-file writes: a temporary sibling renamed into place, nothing left on failure."""

from contextlib import ExitStack

import pytest

from dosepred.fsutil import atomic_file, atomic_path, write_json


def test_atomic_path_renames_on_success_and_keeps_the_suffix(tmp_path):
    final = tmp_path / "a.nii.gz"
    with atomic_path(final, ".nii.gz") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".a.nii.gz.tmp-")
        assert tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"new")
    assert final.read_bytes() == b"new" and [f.name for f in tmp_path.iterdir()] == ["a.nii.gz"]


def test_atomic_path_and_file_leave_the_old_content_on_failure(tmp_path):
    final = tmp_path / "x.json"
    write_json(final, {"old": 1})
    old = final.read_bytes()
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError
    with pytest.raises(RuntimeError), atomic_file(final, "w") as fh:
        fh.write("half")
        raise RuntimeError
    with pytest.raises(FileNotFoundError), atomic_path(final):
        pass  # nothing written: an error, the old file stays
    assert final.read_bytes() == old and [f.name for f in tmp_path.iterdir()] == ["x.json"]


def test_atomic_paths_in_an_exit_stack_are_all_or_nothing(tmp_path):
    names = [tmp_path / f"{k}.npz" for k in range(3)]
    with pytest.raises(KeyboardInterrupt), ExitStack() as stack:
        for k, n in enumerate(names):
            stack.enter_context(atomic_path(n)).write_bytes(b"x")
            if k == 1:
                raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with ExitStack() as stack:
        for n in names:
            stack.enter_context(atomic_path(n)).write_bytes(n.name.encode())
        assert list(tmp_path.glob("*.npz")) == []  # nothing in place before the block ends
    assert [n.read_bytes() for n in names] == [b"0.npz", b"1.npz", b"2.npz"]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["0.npz", "1.npz", "2.npz"]
