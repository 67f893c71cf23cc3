"""The results store: one CSV row per point plus a JSON sidecar with the runs' environments.

Every write replaces the file atomically (write a temporary file beside it, fsync, rename), so a
sweep killed at any moment leaves either the previous file or the new one, never half a row. A lock
file keeps two sweeps from writing the same results at once; it is removed when the sweep ends.
"""
import fcntl
import json
import os
from pathlib import Path

import pandas as pd

from profiler.results.files import atomic_write_text
from profiler.results.schema import COLUMNS, KEY_COLUMNS, REQUIRED_COLUMNS, STATUSES, TEXT_COLUMNS


class ResultsFileError(Exception):
    """A results file that cannot be used; the message names the file and the problem."""


def sidecar_path(results_path: Path) -> Path:
    return results_path.with_name(results_path.stem + ".meta.json")


def read_results(path: Path) -> pd.DataFrame:
    """Reads and validates a results file; raises ResultsFileError with a one-line reason."""
    path = Path(path)
    if not path.exists():
        raise ResultsFileError(f"results file {path} does not exist")
    if path.is_dir():
        raise ResultsFileError(f"results file {path} is a directory")
    if path.stat().st_size == 0:
        raise ResultsFileError(f"results file {path} is empty")
    try:
        frame = pd.read_csv(path, dtype=TEXT_COLUMNS)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResultsFileError(f"results file {path} is corrupted: {reason}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ResultsFileError(f"results file {path} is not a seqprof results file (missing columns: {shown})")
    frame = frame.reindex(columns=list(dict.fromkeys(COLUMNS + list(frame.columns))))
    bad_status = sorted(set(frame["status"].dropna()) - set(STATUSES))
    if bad_status or frame["status"].isna().any():
        raise ResultsFileError(f"results file {path} is corrupted: unknown or missing status values {bad_status}")
    if frame[["model", "mode", "seq_len", "batch_size"]].isna().any().any():
        raise ResultsFileError(f"results file {path} is corrupted: rows without model, mode, length or batch size")
    return frame


def recorded_run(path: Path) -> dict:
    """The options of the latest run recorded in the sidecar of ``path`` ({} if there is none)."""
    meta_path = sidecar_path(Path(path))
    if not meta_path.is_file():
        return {}
    try:
        runs = json.loads(meta_path.read_text()).get("runs") or []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        raise ResultsFileError(f"metadata file {meta_path} is corrupted or unreadable") from None
    return runs[-1] if isinstance(runs, list) and runs and isinstance(runs[-1], dict) else {}


class ResultsStore:
    """An open results file that a sweep appends to; use as a context manager to hold the lock."""

    def __init__(self, path: Path, frame: pd.DataFrame, metadata: dict):
        self.path = Path(path)
        self.frame = frame
        self.metadata = metadata
        self._lock_handle = None

    @classmethod
    def create(cls, path: Path) -> "ResultsStore":
        path = Path(path)
        if path.exists():
            raise ResultsFileError(f"results file {path} already exists; pass --resume to continue it or choose another --out")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResultsFileError(f"cannot create folder {path.parent}: {exc.strerror}") from None
        if not os.access(path.parent, os.W_OK):
            raise ResultsFileError(f"cannot write results to {path.parent}: permission denied")
        return cls(path, pd.DataFrame(columns=COLUMNS), {"runs": []})

    @classmethod
    def resume(cls, path: Path) -> "ResultsStore":
        frame = read_results(path)
        if not os.access(Path(path).parent, os.W_OK) or not os.access(path, os.W_OK):
            raise ResultsFileError(f"cannot write results to {path}: permission denied")
        metadata = {"runs": []}
        meta_path = sidecar_path(Path(path))
        if meta_path.exists():
            try:
                metadata = json.loads(meta_path.read_text())
            except json.JSONDecodeError as exc:
                raise ResultsFileError(f"metadata file {meta_path} is corrupted: {exc.msg}") from None
        return cls(path, frame, metadata)

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def __enter__(self) -> "ResultsStore":
        while True:
            handle = open(self.lock_path, "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                raise ResultsFileError(f"results file {self.path} is in use by another sweep") from None
            # The holder before us removes the lock file as it leaves: a lock taken on a file that
            # is no longer at the path guards nothing, so take the one there now.
            try:
                if os.stat(self.lock_path).st_ino == os.fstat(handle.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()
        self._lock_handle = handle
        return self

    def __exit__(self, *exc) -> None:
        # Removed while still held, so no other sweep can take a lock on the file being removed.
        self.lock_path.unlink(missing_ok=True)
        fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
        self._lock_handle.close()

    def measured_keys(self, retry_errors: bool = True) -> set[tuple]:
        """Keys of rows that need no new measurement (error rows are retried by default)."""
        rows = self.frame if not retry_errors else self.frame[self.frame["status"] != "error"]
        return {tuple(r) for r in rows[KEY_COLUMNS].itertuples(index=False)}

    def start_run(self, run_metadata: dict) -> None:
        self.metadata.setdefault("runs", []).append(run_metadata)
        self._write_metadata()
        if not self.path.exists():
            self._write_frame()

    def finish_run(self, **fields) -> None:
        self.metadata["runs"][-1].update(fields)
        self._write_metadata()

    def append(self, row: dict) -> None:
        """Adds one point's row (replacing an earlier row of the same key) and rewrites atomically."""
        key = tuple(row[c] for c in KEY_COLUMNS)
        if len(self.frame):
            same = (self.frame[KEY_COLUMNS] == pd.Series(key, index=KEY_COLUMNS)).all(axis=1)
            self.frame = self.frame[~same]
        new = pd.DataFrame([{c: row.get(c) for c in COLUMNS}], columns=COLUMNS)
        self.frame = new if self.frame.empty else pd.concat([self.frame, new], ignore_index=True)
        self._write_frame()

    def _write_frame(self) -> None:
        atomic_write_text(self.path, self.frame.to_csv(index=False))

    def _write_metadata(self) -> None:
        atomic_write_text(sidecar_path(self.path), json.dumps(self.metadata, indent=2, default=str) + "\n")
