"""The results store: one CSV row per point plus a JSON sidecar with the runs' environments.

Beside a results file ``x.csv`` lie its sidecar ``x.csv.meta.json``, its lock ``x.csv.lock`` while a
sweep has it open, and ``.x.csv.<8 hex digits>.tmp`` while a write is under way. A results file may
not end in ``.meta.json`` or ``.lock``, so it is never another's sidecar or lock, and two results
files (``x.csv``, ``x.tsv``) never share a sidecar. Through a symbolic link, all of them lie beside
the link's target.

A sweep takes the lock before it reads the file and holds it until its last write, so two sweeps
never both read-modify-write one file: the second is told the file is in use, whatever the timing.
Every write replaces the file atomically (write a temporary file beside it, fsync, rename), so a
sweep killed at any moment leaves either the previous file or the new one, never half a row. A
file or folder that cannot be read or written is a ResultsFileError with one line, and leaves the
file as it was.
"""
import csv
import fcntl
import io
import json
import os
from pathlib import Path

import pandas as pd

from profiler.results.files import TEMPORARY_NAME_EXTRA, atomic_write_text, remove_temporaries, resolved
from profiler.results.schema import COLUMNS, KEY_COLUMNS, KNOB_DEFAULTS, MODES, REQUIRED_COLUMNS, STATUSES, TEXT_COLUMNS

SIDECAR_SUFFIX = ".meta.json"
LOCK_SUFFIX = ".lock"
TEXT_KEYS = ("model", "attention", "profile", "mode", "device", "dtype", "execution")
INTEGER_KEYS = ("seq_len", "batch_size", "seed")
POSITIVE_KEYS = {"seq_len": "length", "batch_size": "batch size"}
assert set(TEXT_KEYS) | set(INTEGER_KEYS) == set(KEY_COLUMNS)


class ResultsFileError(Exception):
    """A results file that cannot be used; the message names the file and the problem."""


def sidecar_path(results_path: Path) -> Path:
    """``x.csv`` -> ``x.csv.meta.json``, beside the file a symbolic link names."""
    target = resolved(results_path)
    return target.with_name(target.name + SIDECAR_SUFFIX)


def _legacy_sidecar_path(results_path: Path) -> Path:
    # Before the sidecar's name kept the results file's suffix, x.csv and x.tsv shared x.meta.json.
    target = resolved(results_path)
    return target.with_name(target.stem + SIDECAR_SUFFIX)


def read_results(path: Path) -> pd.DataFrame:
    """Reads and validates a results file; raises ResultsFileError with a one-line reason.

    Every command that reads results reads them here. A row is named as a spreadsheet numbers it
    (the header is row 1): a key value that is missing, not an integer or a length <= 0, an
    unknown status, a row cut short and a point stored twice are each an error naming the row and
    the column.
    """
    path = Path(path)
    if not path.exists():
        raise ResultsFileError(f"results file {path} does not exist")
    if path.is_dir():
        raise ResultsFileError(f"results file {path} is a directory")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ResultsFileError(f"results file {path} is corrupted: not UTF-8 text") from None
    except OSError as exc:
        raise ResultsFileError(f"cannot read results file {path}: {exc.strerror or exc}") from None
    if not text:
        raise ResultsFileError(f"results file {path} is empty")
    rows = _row_numbers(path, text)
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=TEXT_COLUMNS)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResultsFileError(f"results file {path} is corrupted: {reason}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ResultsFileError(f"results file {path} is not a seqprof results file (missing columns: {shown})")
    if len(frame) != len(rows):  # the two parsers disagree: a file no writer of ours made
        raise ResultsFileError(f"results file {path} is corrupted: {len(rows)} rows read as {len(frame)}")
    frame = frame.reindex(columns=list(dict.fromkeys(COLUMNS + list(frame.columns))))
    for knob, default in KNOB_DEFAULTS.items():  # a file from before the knob measured its default
        frame[knob] = frame[knob].astype(object).fillna(default)
    return _checked_keys(path, frame, rows)


def _row_numbers(path: Path, text: str) -> list[int]:
    """The row number of each record (its first line); a record whose field count differs from the
    header's is an error, as is a quote left open at the end (a file cut short)."""
    reader = csv.reader(io.StringIO(text), strict=True)
    header, rows, end = None, [], 0
    try:
        for record in reader:
            start, end = end + 1, reader.line_num
            if not record:  # a blank line, which pandas skips too
                continue
            if header is None:
                header = record
            elif len(record) < len(header):
                raise ResultsFileError(
                    f"results file {path}, row {start}, column {header[len(record)]}: missing; the row has "
                    f"{len(record)} of {len(header)} fields (cut short?)"
                )
            elif len(record) > len(header):
                raise ResultsFileError(
                    f"results file {path}, row {start}: {len(record)} fields, the header has {len(header)}")
            else:
                rows.append(start)
    except csv.Error as exc:
        raise ResultsFileError(f"results file {path} is corrupted at row {end + 1}: {exc} (cut short?)") from None
    return rows


def _checked_keys(path: Path, frame: pd.DataFrame, rows: list[int]) -> pd.DataFrame:
    """``frame`` with integer key columns as integers; the first bad value (in file order) is an error."""
    problems = []  # (position, column, what is wrong)

    def first(bad: pd.Series, column: str, describe) -> None:
        if bad.any():
            position = int(bad.to_numpy().nonzero()[0][0])
            value = frame[column].iloc[position]
            value = value.item() if hasattr(value, "item") else value  # numpy scalars print as np.float64(...)
            problems.append((position, column, "missing" if pd.isna(value) else describe(value)))

    status = frame["status"]
    first(status.isna() | ~status.isin(STATUSES), "status", lambda v: f"{v!r} is not one of {', '.join(STATUSES)}")
    for column in TEXT_KEYS:
        values = frame[column]
        first(values.isna() | (values.astype(str).str.strip() == ""), column, lambda v: "missing")
    first(frame["mode"].notna() & ~frame["mode"].isin(MODES), "mode",
          lambda v: f"{v!r} is not one of {', '.join(MODES)}")
    numbers = {}
    for column in INTEGER_KEYS:
        number = pd.to_numeric(frame[column], errors="coerce")
        finite = number.notna() & number.abs().lt(2**63)
        first(~finite | (number.where(finite, 0) % 1 != 0), column, lambda v: f"{v!r} is not an integer")
        if column in POSITIVE_KEYS:
            first(finite & (number <= 0), column, lambda v, what=POSITIVE_KEYS[column]: f"{v} is not a positive {what}")
        numbers[column] = number
    if problems:
        position, column, problem = min(problems)
        raise ResultsFileError(f"results file {path}, row {rows[position]}, column {column}: {problem}")
    for column, number in numbers.items():
        frame[column] = number.astype("int64")
    for column in TEXT_KEYS:
        frame[column] = frame[column].astype(str)
    repeated = frame.duplicated(KEY_COLUMNS, keep=False)
    if repeated.any():
        positions = repeated.to_numpy().nonzero()[0]
        key = tuple(frame[KEY_COLUMNS].iloc[positions[0]])
        same = [int(p) for p in positions if tuple(frame[KEY_COLUMNS].iloc[p]) == key]
        raise ResultsFileError(
            f"results file {path}, row {rows[same[1]]}: the same point as row {rows[same[0]]} "
            f"(columns {', '.join(KEY_COLUMNS)} agree); keep one of them"
        )
    return frame


def read_many(paths: list[Path], later_replaces: bool = False) -> pd.DataFrame:
    """The rows of several results files as one table. A point in two files must be the same row
    (the same file given twice); two different measurements of one point are a ResultsFileError,
    unless ``later_replaces``: then the row of the last file named stands (points measured again)."""
    frames = [read_results(path).assign(_source=str(path)) for path in paths]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    frame = frame.drop_duplicates(subset=[c for c in frame.columns if c != "_source"])
    if later_replaces:
        frame = frame.drop_duplicates(subset=KEY_COLUMNS, keep="last")
    repeated = frame[frame.duplicated(subset=KEY_COLUMNS, keep=False)]
    if len(repeated):
        keys = repeated[KEY_COLUMNS].astype(str)
        same = repeated[(keys == keys.iloc[0]).all(axis=1)]
        point = ", ".join(f"{c}={v}" for c, v in keys.iloc[0].items())
        raise ResultsFileError(f"results files {' and '.join(dict.fromkeys(same['_source']))} both hold {point} with "
                               f"different values ({len(repeated)} rows in conflict); give files of different points, "
                               "or let the last file's rows stand (--later-replaces)")
    return frame.drop(columns="_source").reset_index(drop=True)


# The options a run records that a resume reads back, and what each must be.
_RECORDED_OPTIONS = {
    "models": ("a list of names", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "lengths": ("a list of positive integers",
                lambda v: isinstance(v, list) and all(_is_int(x) and x > 0 for x in v)),
    "modes": ("a list of names", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "attention": ("a list of names", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "dtypes": ("a list of names", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "executions": ("a list of names", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "batch_size": ("a positive integer", lambda v: _is_int(v) and v > 0),
    "seed": ("an integer", lambda v: _is_int(v)),
    "profile": ("a name or a name per model", lambda v: isinstance(v, (str, dict))),
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_metadata(meta_path: Path) -> dict:
    """A sidecar's content, checked: an object whose ``runs`` is a list of objects, the latest
    run's options of the types a resume expects. Raises ResultsFileError naming the file."""
    try:
        data = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ResultsFileError(f"metadata file {meta_path} is corrupted: {exc.msg} at line {exc.lineno}") from None
    except UnicodeDecodeError:
        raise ResultsFileError(f"metadata file {meta_path} is corrupted: not UTF-8 text") from None
    except OSError as exc:
        raise ResultsFileError(f"cannot read metadata file {meta_path}: {exc.strerror or exc}") from None
    if not isinstance(data, dict):
        raise ResultsFileError(f"metadata file {meta_path} is not a seqprof sidecar: a JSON object was expected, "
                               f"not {type(data).__name__}")
    runs = data.setdefault("runs", [])
    if not isinstance(runs, list):
        raise ResultsFileError(f"metadata file {meta_path} is not a seqprof sidecar: 'runs' is not a list")
    for number, run in enumerate(runs, start=1):
        if not isinstance(run, dict):
            raise ResultsFileError(f"metadata file {meta_path}: run {number} is not a JSON object")
    if runs:
        for option, (expected, valid) in _RECORDED_OPTIONS.items():
            if runs[-1].get(option) is not None and not valid(runs[-1][option]):
                raise ResultsFileError(f"metadata file {meta_path}: run {len(runs)}'s {option} is not {expected}")
    return data


class ResultsStore:
    """An open results file that a sweep appends to, locked from before it is read until ``close``
    (or the end of a ``with`` block). ``create`` and ``resume`` open one."""

    def __init__(self, path: Path, frame: pd.DataFrame, metadata: dict, lock: "_Lock"):
        self.path = Path(path)
        self.frame = frame
        self.metadata = metadata
        self._target = resolved(self.path)
        self._lock = lock

    @classmethod
    def create(cls, path: Path) -> "ResultsStore":
        """A new results file at ``path`` (nothing is written until ``start_run``)."""
        path = Path(path)
        _check_name(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResultsFileError(f"cannot create folder {path.parent}: {exc.strerror}") from None
        return cls._open(path, resume=False)

    @classmethod
    def resume(cls, path: Path) -> "ResultsStore":
        """The results file at ``path`` and its sidecar, read after the lock is taken."""
        path = Path(path)
        _check_name(path)
        try:
            exists = resolved(path).exists()
        except OSError as exc:
            raise ResultsFileError(f"cannot open results file {path}: {exc.strerror or exc}") from None
        if not exists:
            raise ResultsFileError(f"results file {path} does not exist")
        return cls._open(path, resume=True)

    @classmethod
    def _open(cls, path: Path, resume: bool) -> "ResultsStore":
        lock = _Lock.take(path)
        try:
            target = resolved(path)
            if target.is_dir():
                raise ResultsFileError(f"results file {path} is a directory")
            if not resume and target.exists():
                raise ResultsFileError(
                    f"results file {path} already exists; pass --resume to continue it or choose another --out")
            frame = read_results(path) if resume else pd.DataFrame(columns=COLUMNS)
            metadata = _open_metadata(path, resume)
            _check_writable(path)
            for leftover in (target, sidecar_path(path)):
                remove_temporaries(leftover)  # of a sweep killed mid-write; the lock says none is running
        except OSError as exc:
            lock.release()
            raise ResultsFileError(f"cannot open results file {path}: {exc.strerror or exc}") from None
        except BaseException:
            lock.release()
            raise
        return cls(path, frame, metadata, lock)

    def close(self) -> None:
        """Releases the lock; the store writes nothing more."""
        self._lock.release()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def recorded_run(self) -> dict:
        """The options of the latest run recorded in the sidecar ({} if there is none)."""
        runs = self.metadata.get("runs") or []
        return runs[-1] if runs else {}

    def measured_keys(self, retry_errors: bool = True) -> set[tuple]:
        """Keys of rows that need no new measurement (error rows are retried by default)."""
        rows = self.frame if not retry_errors else self.frame[self.frame["status"] != "error"]
        return {tuple(r) for r in rows[KEY_COLUMNS].itertuples(index=False)}

    def start_run(self, run_metadata: dict) -> None:
        self.metadata.setdefault("runs", []).append(run_metadata)
        self._write_metadata()
        if not self._target.exists():
            self._write_frame()

    def finish_run(self, **fields) -> None:
        self.metadata["runs"][-1].update(fields)
        self._write_metadata()

    def append(self, row: dict) -> None:
        """Adds one point's row (replacing an earlier row of the same key) and rewrites atomically."""
        key = tuple(row[c] for c in KEY_COLUMNS)
        if len(self.frame):
            same = (self.frame[KEY_COLUMNS] == pd.Series(key, index=KEY_COLUMNS)).all(axis=1)
            kept = self.frame[~same]
        else:
            kept = self.frame
        new = pd.DataFrame([{c: row.get(c) for c in COLUMNS}], columns=COLUMNS)
        frame = new if kept.empty else pd.concat([kept, new], ignore_index=True)
        self._write(self._target, frame.to_csv(index=False), f"results file {self.path}")
        self.frame = frame  # only once the file holds it

    def _write_frame(self) -> None:
        self._write(self._target, self.frame.to_csv(index=False), f"results file {self.path}")

    def _write_metadata(self) -> None:
        meta_path = sidecar_path(self._target)
        self._write(meta_path, json.dumps(self.metadata, indent=2, default=str) + "\n", f"metadata file {meta_path}")

    def _write(self, path: Path, text: str, what: str) -> None:
        if self._lock.released:
            raise ResultsFileError(f"{what} is closed; it cannot be written")
        try:
            atomic_write_text(path, text)
        except OSError as exc:
            raise ResultsFileError(
                f"cannot write {what}: {exc.strerror or exc}; what was written before is kept") from None


def _check_name(path: Path) -> None:
    """A results file is never a sidecar or a lock, and its sidecar's temporary name fits the
    file system (checked before anything is measured, not at the first write)."""
    name = resolved(path).name
    for suffix, what in ((SIDECAR_SUFFIX, "metadata sidecars"), (LOCK_SUFFIX, "locks")):
        if name.endswith(suffix):
            raise ResultsFileError(f"results file {path}: a name ending in {suffix} is reserved for {what}; "
                                   "choose another --out")
    folder = resolved(path).parent
    while not os.path.isdir(folder) and folder != folder.parent:
        folder = folder.parent
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    longest = len(os.fsencode(name)) + len(SIDECAR_SUFFIX) + TEMPORARY_NAME_EXTRA
    if longest > limit:
        fits = limit - len(SIDECAR_SUFFIX) - TEMPORARY_NAME_EXTRA
        raise ResultsFileError(f"results file {path}: the name is too long for the file system "
                               f"({len(os.fsencode(name))} bytes; a name of at most {fits} leaves room for its sidecar's)")


def _open_metadata(path: Path, resume: bool) -> dict:
    meta_path = sidecar_path(path)
    if meta_path.is_dir():
        raise ResultsFileError(f"metadata file {meta_path} is a directory; move it away")
    if not resume:
        return {"runs": []}  # a sidecar left by a deleted results file of this name is replaced
    if not meta_path.exists():
        legacy = _legacy_sidecar_path(path)
        if legacy.is_file():
            raise ResultsFileError(f"results file {path} has its metadata under the old name {legacy}; "
                                   f"rename it to {meta_path} to resume")
        return {"runs": []}
    return read_metadata(meta_path)


def _check_writable(path: Path) -> None:
    target = resolved(path)
    for candidate in (target.parent, target, sidecar_path(path)):
        if candidate.exists() and not os.access(candidate, os.W_OK):
            shown = path.parent if candidate == target.parent else candidate
            raise ResultsFileError(f"cannot write results to {shown}: permission denied")


class _Lock:
    """An exclusive flock on ``<results>.lock``, taken without waiting, removed on release.

    The holder removes the lock file before it lets go, so a sweep that opened the old file just
    then may lock a file no longer in the folder; it checks it holds the one the name leads to and
    otherwise tries again.
    """

    def __init__(self, fd: int, path: Path):
        self._fd = fd
        self.path = path

    @property
    def released(self) -> bool:
        return self._fd is None

    @classmethod
    def take(cls, results_path: Path) -> "_Lock":
        target = resolved(results_path)
        lock_path = target.with_name(target.name + LOCK_SUFFIX)
        for _ in range(10):
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            except IsADirectoryError:
                raise ResultsFileError(f"cannot lock results file {results_path}: {lock_path} is a directory; "
                                       "move it away") from None
            except OSError as exc:
                raise ResultsFileError(
                    f"cannot lock results file {results_path}: {lock_path}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise ResultsFileError(f"results file {results_path} is in use by another sweep") from None
            except OSError as exc:
                os.close(fd)
                raise ResultsFileError(f"cannot lock results file {results_path}: {exc.strerror or exc}") from None
            if _names(lock_path, fd):
                return cls(fd, lock_path)
            os.close(fd)
        raise ResultsFileError(f"results file {results_path} is in use by another sweep")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass  # a folder that allows no removal keeps the file; the next sweep reuses it
        os.close(self._fd)  # closing lets go of the flock
        self._fd = None


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` still leads to the open file ``fd``."""
    try:
        named, held = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
