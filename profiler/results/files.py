"""Writing files so that a reader never sees half of one, and naming new ones by time."""
import datetime
import os
import tempfile
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    """Writes a temporary file beside ``path``, fsyncs it and renames it over ``path``: a reader
    (or a crash) sees the old content or the new, never a mix; nothing is left behind on failure."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def timestamped_path(folder: Path, prefix: str, suffix: str = ".csv") -> Path:
    """``folder/<prefix>-YYYYMMDD-HHMMSS<suffix>``: a new file name for each run."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(folder) / f"{prefix}-{stamp}{suffix}"
