"""fsutil's single-file writes: a temporary sibling renamed into place, nothing left on failure."""

from contextlib import ExitStack
from pathlib import Path

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


def _interrupted_save(obj, fh):
    """torch.save interrupted by Ctrl-C mid-write: its zip writer's exit raises its own error
    (``RuntimeError: [enforce fail at inline_container.cc] . unexpected pos ...``) in place of it."""
    fh.write(b"half a checkpoint")
    try:
        raise KeyboardInterrupt
    finally:
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 76928 vs 76816")


def test_save_torch_interrupted_mid_write_is_a_ctrl_c_and_leaves_the_old_file(tmp_path, monkeypatch):
    import torch

    from dosepred.fsutil import save_torch

    final = tmp_path / "last.pt"
    save_torch({"epoch": 1}, final)
    old = final.read_bytes()
    monkeypatch.setattr(torch, "save", _interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_torch({"epoch": 2}, final)
    assert final.read_bytes() == old and [f.name for f in tmp_path.iterdir()] == ["last.pt"]


def test_interrupted_follows_the_chain_of_errors():
    from dosepred.errors import interrupted

    try:
        _interrupted_save({}, open("/dev/null", "wb"))
    except RuntimeError as e:
        assert interrupted(e)
    assert not interrupted(RuntimeError("a bug"))
    try:
        try:
            raise ValueError("first")
        except ValueError:
            raise RuntimeError("second") from None  # noqa: B904 - the chain the check must not follow
    except RuntimeError as e:
        assert not interrupted(e)


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs /sys")
def test_output_file_in_a_read_only_folder_names_the_file_asked_for():
    """/sys exists and refuses new files even to root: the error names the file, not its temporary
    sibling, and comes before the caller writes anything."""
    from dosepred.fsutil import OutputError, output_file

    with pytest.raises(OutputError, match=r"^/sys/dosepred-test\.json: cannot write here \("):
        with output_file("/sys/dosepred-test.json"):
            raise AssertionError("the block must not run")


def test_a_write_on_a_read_only_file_system_names_the_file_not_its_temporary(monkeypatch):
    """On a read-only mount removing the temporary file that was never made fails too (EROFS, not
    ENOENT); that error replaced the write's own and named the temporary: ``train --resume`` of a run on
    a read-only share said 'error: RUN/.config.json.tmp-d547: Read-only file system'. /sys refuses the
    file; Path.unlink raises as on such a mount."""
    import errno

    from dosepred.fsutil import OutputError, output_file

    def unlink(self, missing_ok=False):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(OSError) as e:
        write_json("/sys/dosepred-test.json", {"a": 1})
    assert e.value.filename == "/sys/dosepred-test.json", e.value
    with pytest.raises(OSError) as e, atomic_file("/sys/dosepred-test.csv", "w") as fh:
        fh.write("a")
    assert e.value.filename == "/sys/dosepred-test.csv", e.value
    with pytest.raises(OutputError, match=r"^/sys/dosepred-test\.json: cannot write here \("):
        with output_file("/sys/dosepred-test.json"):
            raise AssertionError("the block must not run")


def _full_disk_save(obj, fh):
    """torch.save meeting a full disk: its zip writer's exit raises its own error over the OSError."""
    import errno

    fh.write(b"half a checkpoint")
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    finally:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


def test_save_torch_on_a_full_disk_is_an_os_error_naming_the_file(tmp_path, monkeypatch):
    """A checkpoint written onto a full disk: torch's zip writer replaced the OSError with 'unexpected
    pos', and `train` (also --resume), `export-model` reported it as a bug in dosepred (exit 1, a
    traceback). Now it is the OSError, naming the checkpoint (the one-line error, exit 2); the old
    file stays."""
    import errno

    import torch

    from dosepred.fsutil import save_torch

    final = tmp_path / "last.pt"
    save_torch({"epoch": 1}, final)
    old = final.read_bytes()
    monkeypatch.setattr(torch, "save", _full_disk_save)
    with pytest.raises(OSError) as e:
        save_torch({"epoch": 2}, final)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(final)
    assert final.read_bytes() == old and [f.name for f in tmp_path.iterdir()] == ["last.pt"]


def test_a_full_disk_names_the_output_not_its_temporary_name(tmp_path):
    """A full disk met while writing a file into an output folder: the error named nothing ('[Errno 28]
    No space left on device': nibabel's gzip, pydicom, torch) or the temporary names
    (``OUT/.c.tmp-1a2b/.pt_1.npz.tmp-3c4d``); now it names the file of the finished output."""
    import errno

    from dosepred.fsutil import output_dir, write_text

    out = tmp_path / "out"
    for name, only_writes, expect in [(None, True, out / "p1" / "dose.nii.gz"),
                                      ("tmp", False, out / "p1" / "dose.nii.gz")]:
        with pytest.raises(OSError) as e, output_dir(out) as tmp:
            write_text(tmp / "dataset.json", "{}")
            with atomic_path(tmp / "p1" / "dose.nii.gz", only_writes=only_writes) as f:
                raise OSError(errno.ENOSPC, "No space left on device", None if name is None else str(f))
        assert e.value.errno == errno.ENOSPC and e.value.filename == str(expect), e.value
        assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError) as e, atomic_file(tmp_path / "a.csv", "w"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert e.value.filename == str(tmp_path / "a.csv") and list(tmp_path.iterdir()) == []
    # a block that does more than write the file (reads inputs): an unnamed error is not blamed on it
    with pytest.raises(OSError) as e, atomic_path(tmp_path / "b.npz"):
        raise OSError(errno.EIO, "Input/output error")
    assert e.value.filename is None


def test_an_output_with_a_long_legal_name_is_written(tmp_path):
    """An output whose name is legal (250 bytes, under the 255 most file systems take) failed with
    'cannot write here (File name too long)': its temporary sibling '.NAME.tmp-XXXXXXXX' was 264 bytes.
    Now the temporary name is cut to fit, and the output is written under its own name."""
    from dosepred.fsutil import output_dir, output_file

    name = "x" * 246 + "é"  # 248 bytes in UTF-8
    with output_dir(tmp_path / name) as tmp:
        write_json(tmp / "a.json", {"a": 1})
    with output_file(tmp_path / (name[:-3] + ".json")) as tmp:
        write_json(tmp, {"b": 2})
    with atomic_path(tmp_path / (name[:-7] + ".nii.gz"), ".nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"nii")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, name[:-3] + ".json",
                                                                 name[:-7] + ".nii.gz"])
    assert (tmp_path / name / "a.json").is_file()


def test_an_output_written_by_another_command_meanwhile_is_kept_and_this_run_refused(tmp_path):
    """Two commands given one --out at once (two nightly jobs, no --overwrite): both found it free, and
    the one ending last replaced the other's finished output whole; both exited 0, the first one's
    patients gone without a word. Now the one ending last, finding the output written meanwhile, is an
    OutputError naming it, the other's output stays as written and nothing of this run is left."""
    from dosepred.fsutil import OutputError, output_dir, output_file

    out = tmp_path / "out"
    with pytest.raises(OutputError, match=r"out: --out was written by another command while this one ran"):
        with output_dir(out) as tmp:
            (tmp / "pt_201.csv").write_text("mine\n")
            out.mkdir()  # the other command's output, finished first
            (out / "pt_66.csv").write_text("theirs\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in out.iterdir()] == ["pt_66.csv"] and (out / "pt_66.csv").read_text() == "theirs\n"
    js = tmp_path / "e.json"
    with pytest.raises(OutputError, match=r"e\.json: --json was written by another command while this one"):
        with output_file(js, what="--json") as tmp:
            tmp.write_text("mine")
            js.write_text("theirs")
    assert js.read_text() == "theirs" and sorted(p.name for p in tmp_path.iterdir()) == ["e.json", "out"]
    with output_dir(out, overwrite=True) as tmp:  # --overwrite replaces it whole, as before
        (tmp / "pt_201.csv").write_text("mine\n")
    assert [p.name for p in out.iterdir()] == ["pt_201.csv"]


def test_an_empty_out_folder_is_filled_where_rename_does_not_replace_a_folder(tmp_path, monkeypatch):
    """--out an empty folder made beforehand (mkdir out), on a file system whose rename does not
    replace an existing folder, even an empty one (some network and FUSE mounts, Windows: EEXIST):
    the whole run's output was refused at the end as 'written by another command while this one ran',
    which nothing had. The empty folder is now removed and the output put in its place."""
    import errno
    import os

    from dosepred.fsutil import output_dir

    real = os.replace

    def replace(src, dst):  # such a file system: an existing folder is never replaced
        if os.path.isdir(dst) and os.path.isdir(src):
            raise FileExistsError(errno.EEXIST, "File exists", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "out"
    out.mkdir()
    with output_dir(out) as tmp:
        (tmp / "pt_201.csv").write_text("mine\n")
    assert [p.name for p in out.iterdir()] == ["pt_201.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_output_given_as_dot_dot_is_written_into_that_folder(tmp_path, monkeypatch):
    """``--out out/sub/..`` ended in an internal error (ValueError: PosixPath('..') has an empty name,
    from the temporary's name); it is now the folder's absolute path, written as given by that path.
    The root folder is refused in one line."""
    import os

    from dosepred.fsutil import OutputError, output_dir

    out = tmp_path / "preds"
    out.mkdir()
    monkeypatch.chdir(tmp_path)
    with output_dir("preds/sub/..") as tmp:
        (tmp / "pt_1.csv").write_text(",data\n")
    assert os.listdir(out) == ["pt_1.csv"]
    with pytest.raises(OutputError, match="root folder"):
        with output_dir("/", overwrite=True):
            pass


@pytest.mark.parametrize("path, overwrite", [(".", False), (".", True), ("..", True)])
def test_a_folder_output_the_command_runs_in_is_refused(tmp_path, monkeypatch, path, overwrite):
    """``--out .`` (run inside the empty folder meant for the outputs) or ``--out ..`` was written by
    renaming a new folder over it (its old content renamed aside): the command said 'wrote ... to .',
    and the shell that ran it was left in a deleted folder, where ``ls`` showed nothing and the next
    command (``evaluate --prediction .``) failed with "No such file or directory". Now refused in one
    line, before anything is written; the folder stays the one the command runs in."""
    import os

    from dosepred.fsutil import OutputError, output_dir, output_in_place

    out = tmp_path / "preds"
    out.mkdir()
    (out / "old.csv").write_text("kept\n")
    if not overwrite:
        (out / "old.csv").unlink()
    monkeypatch.chdir(out)
    for writer in (output_dir, output_in_place):
        with pytest.raises(OutputError, match=r"the folder this command runs in .*cd "):
            with writer(path, overwrite=overwrite) as tmp:
                (Path(tmp) / "pt_1.csv").write_text(",data\n")
        assert Path.cwd() == out.resolve() and os.path.samefile(".", out)  # not a deleted folder
        assert sorted(os.listdir(".")) == (["old.csv"] if overwrite else [])
    assert sorted(os.listdir(tmp_path)) == ["preds"]


def test_a_full_disk_raised_again_by_a_library_names_the_output(tmp_path):
    """pydicom re-raises an error met while writing a data element as a new error of the same type whose
    message holds the tag and a whole traceback, and no errno: `predict --format dicom` on a full disk
    printed 'error: With tag (3004,0050) got exception: [Errno 28] No space left on device', then
    'Traceback (most recent call last): ...', naming no file. The output's error is now the full disk's
    own, naming the file."""
    import errno

    from pydicom.tag import Tag, tag_in_exception

    out = tmp_path / "RD.dcm"
    with pytest.raises(OSError) as e, atomic_path(out, only_writes=True), tag_in_exception(Tag(0x30040050)):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a full disk's write
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(out), str(e.value)
    assert "Traceback" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("path, overwrite", [(".", False), (".", True)])
def test_a_file_output_given_as_the_folder_the_command_runs_in_is_refused(tmp_path, monkeypatch, path,
                                                                         overwrite):
    """``data split ... --out .`` (or ``--json .``) run inside an empty folder: the file output removed
    that folder (an empty folder in the way) and wrote the file in its place, saying 'wrote .'; the
    shell that ran it was left in a deleted folder where ``ls`` showed nothing. Now refused in one line
    before anything is written; the folder stays the one the command runs in."""
    import os

    from dosepred.fsutil import OutputError, check_output, output_file

    here = tmp_path / "split"
    here.mkdir()
    monkeypatch.chdir(here)
    with pytest.raises(OutputError, match=r"the folder this command runs in .*file name"):
        with output_file(path, overwrite=overwrite) as tmp:
            Path(tmp).write_text("{}\n")
    assert here.is_dir() and os.path.samefile(".", here)  # not a deleted folder
    assert os.listdir(".") == [] and sorted(os.listdir(tmp_path)) == ["split"]
    # a folder written in place (train --out . --resume inside the run's folder) is not a file output
    (here / "config.json").write_text("{}\n")
    assert check_output(".", True).resolve() == here.resolve()


def test_a_file_output_given_as_a_non_empty_folder_names_the_remedy_that_works(tmp_path):
    """`data split --out results` (a folder holding files): the up-front check said "exists and is a
    non-empty folder; give --overwrite to replace it whole", and with --overwrite the command said
    "--out is a folder; give a file name" (a file output never replaces a folder). The first refusal
    says so already, with or without --overwrite; the folder is left as it was."""
    from dosepred.fsutil import OutputError, check_output

    d = tmp_path / "results"
    d.mkdir()
    (d / "a.txt").write_text("kept")
    for overwrite in (False, True):
        with pytest.raises(OutputError) as e:
            check_output(d, overwrite, (), "--out", file=True)
        assert "give --overwrite" not in str(e.value) and "give a file name" in str(e.value), str(e.value)
    assert (d / "a.txt").read_text() == "kept"


def test_write_json_writes_standard_json_without_nan_or_infinity(tmp_path):
    """json.dumps writes NaN and infinities as the tokens NaN / Infinity, which strict JSON parsers refuse
    (a bench --json file whose median of nothing is NaN); write_json writes them as null."""
    import json

    nan, inf = float("nan"), float("inf")
    write_json(tmp_path / "x.json", {"a": nan, "b": [1.5, -inf, {"c": inf}], "d": (2, "NaN"), "e": None})
    text = (tmp_path / "x.json").read_text()
    assert "NaN," not in text and "Infinity" not in text, text
    assert json.loads(text) == {"a": None, "b": [1.5, None, {"c": None}], "d": [2, "NaN"], "e": None}
