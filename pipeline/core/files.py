"""Every file the pipeline and the trainer write goes through here: whole or not at all, never litter.

- `atomic_write_bytes(path, data)` / `atomic_write(path, fill)`: the bytes go to a temporary file that
  is renamed onto `path` once complete, so a reader (or a run that was killed) sees the old file or the
  new one, never half of one. On any error the temporary is removed before the error goes on.
- Inside a run's output folder (a folder holding a run's `.lock`), temporaries live in `OUT/.tmp/`, so
  the next run clears what a SIGKILL left behind by emptying one folder (`sweep_temps`) instead of
  walking millions of files. Elsewhere (the trainer's run folder, tools) they sit beside the target as
  `.NAME.tmp-PID`.
- A full disk (ENOSPC, EDQUOT) becomes `DiskFull`: one line naming the path and the space left,
  raised after the temporary is gone. The CLI prints it and exits 1; finished work is kept.
- `append_line` appends one whole line with a single write; `read_jsonl` reads such a file and drops
  a last line a kill cut short (it never raises on it).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

TMP_DIR = ".tmp"
LOCK = ".lock"
_FULL = (errno.ENOSPC, errno.EDQUOT)
_roots: dict[str, str | None] = {}  # folder -> run root above it (or None), cached per folder


class DiskFull(OSError):
    """No space left while writing `path`; the message says where and how much space is left."""

    def __init__(self, path: Path, cause: BaseException | None = None):
        free = _free_bytes(path)
        where = f"{free / 1e6:,.1f} MB free there" if free is not None else "free space unknown"
        super().__init__(errno.ENOSPC, f"disk full while writing {path} ({where}); free some space and run "
                                       "the same command again: finished work is kept and nothing half-written was left")
        self.path = path
        self.__cause__ = cause

    def __str__(self) -> str:
        return self.strerror or "disk full"

    @classmethod
    def reported(cls, message: str) -> DiskFull:
        """The DiskFull another process raised (a Ray worker), from its message (which names the path)."""
        e = cls.__new__(cls)
        OSError.__init__(e, errno.ENOSPC, message)
        e.path = None
        return e


def _free_bytes(path: Path) -> int | None:
    for p in [path, *path.parents]:
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


def is_disk_full(e: BaseException) -> bool:
    """True for ENOSPC/EDQUOT, however a library wrapped it (pyarrow and PIL re-raise as OSError text)."""
    if isinstance(e, DiskFull):
        return True
    if isinstance(e, OSError) and e.errno in _FULL:
        return True
    text = str(e)
    return "No space left on device" in text or "Disk quota exceeded" in text


def run_root(folder: Path) -> Path | None:
    """The run output folder that holds `folder` (the nearest ancestor with a `.lock`), or None."""
    key = str(folder)
    if key not in _roots:
        found = None
        for p in [folder, *folder.parents]:
            if (p / LOCK).is_file():
                found = str(p)
                break
        _roots[key] = found
    root = _roots[key]
    return Path(root) if root is not None else None


def _temp_for(path: Path) -> Path:
    root = run_root(path.parent)
    if root is not None:
        tmp = root / TMP_DIR
        tmp.mkdir(exist_ok=True)
        return tmp / f"{uuid.uuid4().hex}-{os.getpid()}"
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: Path, fill: Callable[[IO[bytes]], Any]) -> None:
    """Create `path` whole: `fill(f)` writes into a temporary binary file, which is then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_for(path)
    try:
        with open(tmp, "wb") as f:
            fill(f)
        try:
            os.replace(tmp, path)
        except OSError as e:
            if e.errno != errno.EXDEV:  # a folder of the run on another disk: write beside it instead
                raise
            tmp.unlink(missing_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            with open(tmp, "wb") as f:
                fill(f)
            os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, Exception) and is_disk_full(e):
            raise DiskFull(path, e) from e
        raise
    _record(path)


_recorders: list[list[Path]] = []


def _record(path: Path) -> None:
    for r in _recorders:
        r.append(path)


@contextmanager
def recording() -> Iterator[list[Path]]:
    """Collect the paths every `atomic_write*` / `atomic_dir` inside the block wrote (the runner uses it
    to know what a stage's `finalize` made, so a no-op run can tell those files are still in place)."""
    got: list[Path] = []
    _recorders.append(got)
    try:
        yield got
    finally:
        _recorders.remove(got)


@contextmanager
def not_recorded() -> Iterator[None]:
    """Writes inside the block are not the caller's own files (`recording` leaves them out): a page that
    every stage refreshes, such as the run's `index.html`, must not tie one stage's finalize stamp to
    another stage's write."""
    saved = _recorders[:]
    _recorders.clear()
    try:
        yield
    finally:
        _recorders[:] = saved


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (see the module docstring)."""
    atomic_write(path, lambda f: f.write(data))


def update_bytes(path: Path, data: bytes) -> bool:
    """`atomic_write_bytes` unless `path` already holds exactly `data` (a no-op run writes nothing);
    returns whether it wrote."""
    try:
        if os.stat(path).st_size == len(data) and Path(path).read_bytes() == data:
            _record(Path(path))  # still one of the files the caller made
            return False
    except OSError:
        pass
    atomic_write_bytes(path, data)
    return True


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it onto `final` when the block ends without
    error (an existing `final` is replaced); on error the temporary folder is removed."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _record(final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Exception) and is_disk_full(e):
            raise DiskFull(final, e) from e
        raise


def sweep_temps(out: Path) -> int:
    """Remove what killed runs left in `out/.tmp/` (call it while holding the run's lock)."""
    tmp = Path(out) / TMP_DIR
    if not tmp.is_dir():
        return 0
    names = os.listdir(tmp)
    for n in names:
        p = tmp / n
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return len(names)


def sweep_beside(folder: Path) -> int:
    """Remove `.NAME.tmp-PID` temporaries directly inside `folder` (written outside a run folder)."""
    if not Path(folder).is_dir():
        return 0
    n = 0
    for name in os.listdir(folder):
        if name.startswith(".") and ".tmp-" in name:
            p = Path(folder) / name
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            n += 1
    return n


def append_line(path: Path, line: str) -> None:
    """Append one line with a single write(2) on an O_APPEND descriptor: a kill leaves at most a cut
    last line, which `read_jsonl` drops."""
    data = (line.rstrip("\n") + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)  # read: the last byte
    try:
        # a previous writer killed mid-line left no newline: start ours on a line of its own
        if os.fstat(fd).st_size and os.pread(fd, 1, os.fstat(fd).st_size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except OSError as e:
        if is_disk_full(e):
            raise DiskFull(Path(path), e) from e
        raise
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(records, lines dropped): every line that parses as a JSON object; a line cut short by a kill
    (or any line that does not parse) is dropped and counted, never raised."""
    records, dropped = [], 0
    if not Path(path).exists():
        return records, 0
    for line in Path(path).read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        if isinstance(value, dict):
            records.append(value)
        else:
            dropped += 1
    return records, dropped
