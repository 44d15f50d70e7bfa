"""Transactional file-system writes: the one place where dosepred writes files and folders safely.

Rules every writing command follows (docs/formats.md, "Outputs"):

- A file is written to a temporary sibling (``.NAME.tmp-XXXX``) and renamed into place
  (:func:`write_bytes`, :func:`write_text`, :func:`write_json`, :func:`save_torch`,
  :func:`atomic_file`, :func:`atomic_path`), so a reader never sees half a file.
- A command's output folder is filled as a temporary sibling and renamed into place only when the
  command succeeded (:func:`output_dir`); a failure (a bad input, a full disk, Ctrl-C) removes the
  temporary folder and leaves the destination exactly as it was, including a destination that did
  not exist (no empty ``--out`` is left behind).
- An existing output that is not empty is never touched unless ``overwrite`` is given; with it the
  old content is replaced whole (no stale files from the earlier output survive).
- An output may not be, hold or lie inside one of the command's inputs (:func:`check_output`).

Long-running outputs that must stay in place while they are written (a training run, which
``--resume`` continues) use :func:`output_in_place`: the old content is set aside and restored
when the command fails; the folder is :func:`locked` while it is written, so a second command given
the same folder meanwhile is refused.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import DosepredError, in_chain, interrupted

__all__ = ["OutputError", "atomic_dir", "atomic_file", "atomic_path", "check_apart", "check_output",
           "is_nonempty", "json_dumps", "json_safe", "locked", "output_dir", "output_file",
           "output_in_place", "save_torch", "write_bytes", "write_json", "write_text"]


class OutputError(DosepredError, ValueError):
    """An output cannot be written (it exists and --overwrite was not given, it overlaps an input,
    or its folder cannot be created)."""


def _named(e: OSError, path: Path, tmp: Path | None = None) -> OSError:
    """``e`` naming the output being written, not its temporary name ``tmp`` (a file, or a folder the
    name lies in), so the error line says which output could not be written; with ``tmp`` None (a block
    that only writes ``path``) also one that names no file (a full disk or quota met by a write says
    only 'No space left on device')."""
    if e.errno is None or e.filename2 is not None:
        return e
    name = e.filename
    if isinstance(name, str) and tmp is not None and (name == str(tmp) or name.startswith(f"{tmp}{os.sep}")):
        name = str(path) + name[len(str(tmp)):]
    elif not (name is None and tmp is None):
        return e
    return OSError(e.errno, e.strerror or str(e), str(name or path))


def _with_errno(e: OSError) -> OSError:
    """``e``, or the error with an errno that ``e`` was raised from where a library raised it again as a
    new ``OSError`` without one (pydicom: 'With tag (3004,0050) got exception: [Errno 28] ...' and a
    whole traceback in the message), so that the output's error is the full disk's own line."""
    x: BaseException | None = e
    seen: set[int] = set()
    while x is not None and id(x) not in seen:
        if isinstance(x, OSError) and x.errno is not None:
            return x
        seen.add(id(x))
        x = x.__cause__ or x.__context__
    return e


def _os_error_in(e: BaseException) -> OSError | None:
    """The first ``OSError`` in the chain of ``e`` (a library's clean-up may raise its own error over a
    failed write: torch.save's zip writer, 'unexpected pos', over a full disk's ``OSError``)."""
    x = in_chain(e, OSError)
    return x if isinstance(x, OSError) else None


#: The longest file name most file systems take (bytes): a temporary sibling of a long name is shortened
NAME_MAX = 255


def _tmp_sibling(path: Path, tag: str = "tmp", suffix: str = "") -> Path:
    """``.NAME.tag-XXXXXXXX`` + ``suffix`` beside ``path``; NAME cut short where the whole would be longer
    than :data:`NAME_MAX` bytes (an output whose own name is legal must not fail for its temporary's)."""
    rest = f".{tag}-{secrets.token_hex(4)}{suffix}"
    name = path.name
    room = NAME_MAX - 1 - len(os.fsencode(rest))
    while len(os.fsencode(name)) > room:
        name = name[:-1]
    return path.with_name(f".{name}{rest}")


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _discard(tmp: Path) -> None:
    """Remove the temporary file ``tmp`` of a failed write, if there is one; a read-only file system
    refuses even to remove nothing (EROFS), which must not replace the error that says why the write
    failed (it named the temporary, ``RUN/.config.json.tmp-1a2b: Read-only file system``)."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def is_nonempty(path: str | os.PathLike) -> bool:
    """True for a file with content, a folder with any entry, or a link (never silently replaced)."""
    p = Path(path)
    if p.is_symlink():
        return True
    if p.is_dir():
        return any(True for _ in p.iterdir())
    return p.exists() and p.stat().st_size > 0


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_output(path: str | os.PathLike, overwrite: bool = False,
                 inputs: Sequence[str | os.PathLike | None] = (), what: str = "--out",
                 folder: bool = False, file: bool = False) -> Path:
    """Refuse an output that overlaps an input, or that exists, is not empty and ``overwrite`` is
    False; return the path (``folder``: a folder output written beside it and renamed into place;
    ``file``: a file output; neither: a folder written in place, a training run to resume). Nothing is
    written. ``-`` is refused: dosepred writes no output to standard output (its tables and lines go
    there), and a file or folder named ``-`` is never what was meant."""
    if str(path) == "-":
        raise OutputError(f"-: {what} - would be a file or folder named '-': dosepred writes its outputs to "
                          "files, never to standard output (the console tables go there); give a path, such "
                          "as results.json, and read it once the command has ended")
    p = Path(path)
    if p.name in ("", ".."):  # ".", "..", "out/..": named by its absolute path (a temporary goes beside it)
        p = Path(os.path.abspath(p))
        if not p.name:
            raise OutputError(f"{path}: {what} is the root folder; give a folder inside it")
    rp = p.resolve()
    for src in inputs:
        if src is None:
            continue
        rs = Path(src).resolve()
        if _overlap(rp, rs):
            rel = "is" if rp == rs else ("lies inside" if rs in rp.parents else "holds")
            raise OutputError(f"{p}: {what} {rel} the input {src}; choose an output outside the inputs")
    if overwrite and p.is_dir() and not p.is_symlink():
        for src in inputs:  # --overwrite replaces p whole: no input may reach into it through a link
            link = None if src is None else _link_into(Path(src), rp)
            if link is not None:
                raise OutputError(f"{p}: {what} holds {link.resolve()}, which the input {src} reaches "
                                  f"through the link {link}; --overwrite would delete it: choose an output "
                                  "outside the inputs")
    if p.is_symlink() and not overwrite:
        raise OutputError(f"{p}: {what} is a symbolic link (to {os.readlink(p)}), never replaced without "
                          f"--overwrite, which replaces the link itself; to write where it points, give "
                          f"that path as {what}")
    if folder:  # before the non-empty rule, whose remedy (--overwrite) would not help here
        _folder_not_file(p, what)
        _not_where_run(p, rp, what)
    elif file:
        _not_where_run(p, rp, what, file=True)
        if p.is_dir() and not p.is_symlink() and is_nonempty(p):  # --overwrite would not help
            raise OutputError(f"{p}: {what} is a folder holding files, and this output is a file, which "
                              "never replaces a folder (also with --overwrite); give a file name")
    if is_nonempty(p) and not overwrite:
        kind = "folder" if p.is_dir() else "file"
        raise OutputError(f"{p}: {what} exists and is a non-empty {kind}; give --overwrite to replace "
                          "it whole, or choose another path")
    return p


def broken_links(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The symbolic links among ``paths`` whose target does not exist (an unmounted drive, a moved or
    deleted folder): readers refuse them rather than read the folder without what they stood for."""
    return [Path(p) for p in paths if Path(p).is_symlink() and not Path(p).exists()]


def broken_links_text(links: Sequence[Path]) -> str:
    """One clause naming up to three of ``links`` (:func:`broken_links`) and what to do."""
    links = sorted(links)
    said = "; ".join(f"{p} is a link to {os.readlink(p)}, which does not exist" for p in links[:3])
    more = f" (and {len(links) - 3} more such links)" if len(links) > 3 else ""
    return (f"{said}{more} (an unmounted drive, a moved or deleted folder?): fix or remove the "
            f"link{'s' if len(links) > 1 else ''}; nothing was read")


def walk_once(src: str | os.PathLike) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(src)`` following symbolic links to folders, each real folder once (no loop on a link to
    a parent, no folder read twice through two links); ``dirs`` may be pruned or sorted in place."""
    seen: set[str] = set()
    for root, dirs, files in os.walk(src, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        yield root, dirs, files


def _link_into(src: Path, out: Path) -> Path | None:
    """The first symbolic link under the folder ``src`` (followed into linked folders, each folder read
    once) that resolves into, onto or around ``out``; None when there is none or ``src`` is no folder."""
    if not src.is_dir():
        return None
    for root, dirs, files in walk_once(src):
        for name in dirs + files:
            q = Path(root, name)
            if q.is_symlink() and _overlap(q.resolve(), out):
                return q
    return None


def check_apart(path: str | os.PathLike | None, folder: str | os.PathLike | None, what: str,
                folder_what: str) -> None:
    """Refuse two outputs of one command that overlap (``--json`` inside ``--report``): the output
    folder is renamed into place whole when the command succeeds, which would drop the other output
    after it was written. Nothing is written; None (an output not asked for) passes."""
    if path is None or folder is None:
        return
    a, b = Path(path).resolve(), Path(folder).resolve()
    if _overlap(a, b):
        rel = "is" if a == b else ("lies inside" if b in a.parents else "holds")
        raise OutputError(f"{path}: {what} {rel} {folder_what} {folder}, which is written as a whole; "
                          f"give {what} a path outside it")


def _folder_not_file(path: Path, what: str) -> None:
    """A folder output never replaces a regular file (``--out notes.txt --overwrite`` is a slip, not a
    wish to turn the file into a folder), whatever ``--overwrite`` says."""
    if path.is_file() and not path.is_symlink():
        raise OutputError(f"{path}: {what} is a file, and this output is a folder: it would replace the "
                          "file (also with --overwrite); choose a folder path")


def _not_where_run(p: Path, rp: Path, what: str, file: bool = False) -> None:
    """An output that is the folder this command runs in (``--out .``), or holds it (``--out ..``):
    a folder output is written beside it and renamed into place (or its old content renamed aside), a
    file output replaces it (an empty folder in the way is removed, :func:`output_file`); either would
    leave the shell that started it in a deleted folder, where ``ls`` shows nothing of what was written
    and the next command fails with "No such file or directory". Refused, before anything is written."""
    try:
        cwd = Path.cwd().resolve()
    except OSError:  # the command already runs in a deleted folder: nothing to keep
        return
    if rp == cwd or rp in cwd.parents:
        where = "is" if rp == cwd else "holds"
        if file:
            raise OutputError(f"{p}: {what} {where} the folder this command runs in ({cwd}), and this "
                              "output is a file: it would replace the folder, leaving your shell in a "
                              f"deleted folder; give {what} a file name (e.g. {what} ./result.json)")
        raise OutputError(f"{p}: {what} {where} the folder this command runs in ({cwd}): a folder output "
                          "replaces it whole (written beside it and renamed into place, or the old one set "
                          "aside), which would leave your shell in a deleted folder (ls would show nothing "
                          f"of what was written); run the command from another folder (e.g. cd {rp.parent}) "
                          f"and give {what} {rp.name}")


def _make_parent(path: Path) -> list[Path]:
    """Create the missing parents of ``path``; return the folders created (outermost last)."""
    created: list[Path] = []
    parent = path.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{path}: cannot create its folder ({e.strerror or e})") from None
    return created


def _unmake(created: list[Path]) -> None:
    for d in created:  # innermost first
        try:
            d.rmdir()
        except OSError:
            break


def _written_meanwhile(final: Path, what: str) -> OutputError:
    return OutputError(f"{final}: {what} was written by another command while this one ran (one output "
                       "given to two commands at once?); it is left as that command wrote it and nothing of "
                       "this run was written: choose another path, or --overwrite to replace it")


def _swap_in(tmp: Path, final: Path, replace: bool = True, what: str = "--out") -> None:
    """Move ``tmp`` to ``final``, replacing whatever is there whole; without ``replace`` (an output
    given without --overwrite, found free or an empty folder) only onto nothing or an empty folder, in
    one rename: a non-empty one is another command's output written meanwhile, an OutputError."""
    if not replace:
        try:
            os.replace(tmp, final)  # rename(2) replaces an empty folder, refuses a non-empty one
        except OSError as e:
            if is_nonempty(final):
                raise _written_meanwhile(final, what) from None
            if not (final.is_dir() and not final.is_symlink()):
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise _written_meanwhile(final, what) from None
                raise
            # an empty folder the file system's rename does not replace (some network and FUSE mounts,
            # Windows): removed first; written meanwhile, it is no longer empty and stays
            try:
                final.rmdir()
                os.replace(tmp, final)
            except OSError:
                if is_nonempty(final):
                    raise _written_meanwhile(final, what) from None
                raise
        return
    if final.is_dir() and not final.is_symlink():
        old = _tmp_sibling(final, "old")
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(old, final)
            raise
        shutil.rmtree(old, ignore_errors=True)
    elif tmp.is_dir() and (final.is_symlink() or final.exists()):
        final.unlink()  # a file or link where a folder goes (checked by the caller)
        os.replace(tmp, final)
    else:
        os.replace(tmp, final)  # a file over a file or link is replaced atomically


@contextmanager
def output_dir(path: str | os.PathLike, overwrite: bool = False,
               inputs: Sequence[str | os.PathLike | None] = (), what: str = "--out") -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; when the block succeeds it replaces ``path``
    whole, when it fails it is removed and ``path`` is left exactly as it was. See the module doc."""
    final = check_output(path, overwrite, inputs, what, folder=True)
    created = _make_parent(final)
    ok = False
    try:
        with atomic_dir(final, replace=overwrite, what=what) as tmp:
            yield tmp
        ok = True
    finally:
        if not ok:
            _unmake(created)


@contextmanager
def output_file(path: str | os.PathLike, overwrite: bool = False,
                inputs: Sequence[str | os.PathLike | None] = (), what: str = "--out") -> Iterator[Path]:
    """Like :func:`output_dir` for one file: yield a temporary path beside ``path`` to write; it is
    renamed onto ``path`` when the block succeeds and removed when it fails."""
    final = check_output(path, overwrite, inputs, what, file=True)
    if final.is_dir() and not final.is_symlink() and is_nonempty(final):
        raise OutputError(f"{final}: {what} is a folder; give a file name")
    created = _make_parent(final)
    tmp = _tmp_sibling(final)
    try:  # a place the file cannot be written is said of the file asked for, not of its temporary sibling
        tmp.touch(exist_ok=False)
        tmp.unlink()
    except OSError as e:
        _unmake(created)
        raise OutputError(f"{final}: cannot write here ({e.strerror or e})") from None
    ok = False
    try:
        yield tmp
        if not tmp.exists():
            raise OutputError(f"{final}: nothing was written")
        if final.is_dir() and not final.is_symlink():
            final.rmdir()  # an empty folder in the way
        if not overwrite:  # no-clobber: another command's file written meanwhile is kept, this run refused
            if is_nonempty(final):
                raise _written_meanwhile(final, what)
            if final.exists():  # an empty file, free to replace (check_output)
                final.unlink()
            try:
                os.link(tmp, final)
            except FileExistsError:
                raise _written_meanwhile(final, what) from None
            except OSError:  # a file system without hard links: the plain rename
                if final.exists() or final.is_symlink():
                    raise _written_meanwhile(final, what) from None
                os.replace(tmp, final)
            else:
                tmp.unlink()
        else:
            os.replace(tmp, final)
        ok = True
    except OSError as e:
        raise _named(e, final, tmp) from None
    finally:
        if not ok:
            _discard(tmp)
            _unmake(created)


@contextmanager
def output_in_place(path: str | os.PathLike, overwrite: bool = False,
                    inputs: Sequence[str | os.PathLike | None] = (), what: str = "--out",
                    keep_on_interrupt: bool = True,
                    keep_if: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """For outputs that must be written where they end up (a training run that ``--resume``
    continues): the old content (with ``overwrite``) is moved to a hidden sibling and the folder is
    created afresh. When the block fails, the new content is removed and the old restored, so the
    destination is as it was; on success the old content is deleted. With ``keep_on_interrupt`` a
    Ctrl-C keeps the new content (a run to resume) and drops the old; so does any other failure when
    ``keep_if(path)`` says the new content is worth more than the old (a training run with a finished
    epoch: hours of work that ``--resume`` continues once the cause is fixed). Given ``keep_if``, a
    Ctrl-C keeps the new content only when it says so too (a run interrupted before its first epoch
    has nothing to resume: the old run, set aside by ``--overwrite``, is restored)."""
    final = check_output(path, overwrite, inputs, what, folder=True)
    with locked(final, what, must_exist=False):  # not set aside while another command writes it
        created = _make_parent(final)
        aside: Path | None = None
        existed = final.exists() or final.is_symlink()
        if existed:
            aside = _tmp_sibling(final, "old")
            try:
                os.replace(final, aside)
            except OSError as e:
                _unmake(created)
                raise OutputError(f"{final}: cannot replace it ({e.strerror or e})") from None
        try:
            final.mkdir()
        except OSError as e:
            if aside is not None:
                os.replace(aside, final)
            _unmake(created)
            raise OutputError(f"{final}: cannot write here ({e.strerror or e})") from None
    try:
        with locked(final, what):  # held while the block writes it
            yield final
    except KeyboardInterrupt:
        if keep_on_interrupt and (keep_if is None or keep_if(final)):
            if aside is not None:
                _remove(aside)
        else:
            _rollback(final, aside, created)
        raise
    except BaseException:
        if keep_if is not None and keep_if(final):
            if aside is not None:
                _remove(aside)
        else:
            _rollback(final, aside, created)
        raise
    if aside is not None:
        _remove(aside)


@contextmanager
def locked(path: str | os.PathLike, what: str = "--out", must_exist: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on the folder ``path`` (``flock``, released when the block ends or the
    process dies, so no stale lock is ever left) while the block writes it in place: a second command
    writing the same folder at once (two trainings started with one ``--out``, a ``--resume`` of a run
    still training) is refused with an :class:`OutputError` instead of mixing its files into the
    other's. Nothing when ``path`` is no folder and not ``must_exist``, or where the platform or file
    system has no such locks."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows)
        fcntl = None
    p = Path(path)
    fd: int | None = None
    if fcntl is not None and (must_exist or (p.is_dir() and not p.is_symlink())):
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            fd = None  # not there or unreadable: what follows says why
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OutputError(f"{p}: {what} is being written by another dosepred command (a training "
                                  f"still running there?); wait for it to end, or choose another {what}"
                                  ) from None
            except OSError:  # a file system without locks: go on unlocked
                pass
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _rollback(final: Path, aside: Path | None, created: list[Path]) -> None:
    _remove(final)
    if aside is not None:
        os.replace(aside, final)
    else:
        _unmake(created)


@contextmanager
def atomic_dir(final: str | os.PathLike, replace: bool = True, what: str = "--out") -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; on success it replaces ``final`` whole, on
    error it is removed (no half-written folder is left). No overwrite check: for folders a command
    owns inside its own output (one patient's folder). Without ``replace`` it goes only where nothing
    or an empty folder is (:func:`_swap_in`)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final)
    try:
        tmp.mkdir()
    except OSError as e:
        raise OutputError(f"{final}: cannot write here ({e.strerror or e})") from None
    ok = False
    try:
        yield tmp
        _swap_in(tmp, final, replace, what)
        ok = True
    except OSError as e:
        raise _named(e, final, tmp) from None
    finally:
        if not ok:
            _remove(tmp)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", only_writes: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (``.NAME.tmp-XXXX`` + ``suffix``, for a library that
    writes to a file name and picks the format from its extension); the block writes it, and it
    replaces ``path`` when the block ends without error and is removed otherwise. No overwrite
    check (see :func:`output_file`). Several of them in one :class:`contextlib.ExitStack` make a
    transaction: every file is renamed into place, or (on an error) none. ``only_writes``: the block
    does nothing but write the file, so an ``OSError`` naming no file (a full disk met by a library's
    write) is said of ``path``."""
    final = Path(path)
    tmp = _tmp_sibling(final, suffix=suffix)
    ok = False
    try:
        yield tmp
        os.replace(tmp, final)
        ok = True
    except OSError as e:
        named = _named(_with_errno(e), final, tmp)
        raise (_named(named, final) if only_writes else named) from None
    finally:
        if not ok:
            _discard(tmp)


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", **kw: Any) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; it replaces ``path`` when the block ends
    without error and is removed otherwise. No overwrite check (see :func:`output_file`)."""
    with atomic_path(path, only_writes=True) as tmp, open(tmp, mode, **kw) as fh:
        yield fh


def write_bytes(path: str | os.PathLike, data: bytes | Callable[[IO[bytes]], Any]) -> None:
    """Write ``data`` (bytes, or a function writing to a binary file object) atomically."""
    with atomic_file(path, "wb") as fh:
        if callable(data):
            data(fh)
        else:
            fh.write(data)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """``text`` atomically; a path in it that is not valid UTF-8 (a folder named in Latin-1, which Python
    reads with surrogate escapes) is written as its original bytes, not refused."""
    with atomic_file(path, "w", encoding=encoding, errors="surrogateescape", newline="") as fh:
        fh.write(text)


def write_json(path: str | os.PathLike, obj: Any, default: Callable[[Any], Any] | None = None) -> None:
    """``obj`` as indented JSON, atomically; a NaN or infinite number is written as null
    (:func:`json_safe`)."""
    write_bytes(path, json_dumps(obj, indent=2, default=default).encode())


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float (in dicts, lists and tuples) replaced by None: standard
    JSON has no such number, and ``json.dumps`` writes them as ``NaN`` / ``Infinity``, tokens that
    strict parsers (JavaScript's ``JSON.parse``, most JSON libraries) refuse, failing the whole file."""
    if isinstance(obj, float):
        return obj if obj - obj == 0 else None  # NaN and +-inf give NaN
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def json_dumps(obj: Any, **kw: Any) -> str:
    """``json.dumps`` of :func:`json_safe` ``(obj)``: standard JSON (no ``NaN``, no ``Infinity``)."""
    return json.dumps(json_safe(obj), allow_nan=False, **kw)


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically (the parent folder is created)."""
    import torch

    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(final, "wb") as fh:
            torch.save(obj, fh)
    except Exception as e:
        if interrupted(e):  # Ctrl-C mid-write: torch's zip writer replaces it on its way out
            raise KeyboardInterrupt from None
        os_error = _os_error_in(e)  # a full disk mid-write: likewise (a user's problem, not a bug)
        if os_error is not None and os_error is not e:
            raise _named(os_error, final) from None
        raise


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class RepeatedKeyError(DosepredError, ValueError):
    """A key repeated in one JSON object (:func:`loads_unique`); ``key`` and ``obj`` (the object as
    JSON would keep it) say which, for the caller's message."""

    def __init__(self, key: str, obj: dict[str, Any]) -> None:
        super().__init__(f"key {key!r} appears twice in one object")
        self.key, self.obj = key, obj


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise RepeatedKeyError(k, dict(pairs))
        out[k] = v
    return out


def loads_unique(text: str) -> Any:
    """``json.loads`` that refuses a key repeated in one object (:class:`RepeatedKeyError`), where JSON
    would keep the last silently: a hand-edited file with a second ``"limit"`` or ``"n"``. Invalid
    JSON raises ``json.JSONDecodeError`` as ``json.loads`` does."""
    return json.loads(text, object_pairs_hook=_unique_pairs)
