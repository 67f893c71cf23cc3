"""Writing files so that a reader never sees half of one, and naming new ones by time."""
import datetime
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    try:  # Linux says it without changing it
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(path: Path) -> int:
    """The permissions ``path`` keeps, or a new file's under the process's umask (0644 or 0664,
    like the figures beside it), where mkstemp alone would leave 0600."""
    try:
        return Path(path).stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def atomic_write_text(path: Path, text: str) -> None:
    """Writes a temporary file beside ``path``, fsyncs it and renames it over ``path``: a reader
    (or a crash) sees the old content or the new, never a mix; nothing is left behind on failure."""
    path = Path(path)
    mode = new_file_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
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
