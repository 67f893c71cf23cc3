"""Writing files so that a reader never sees half of one, and naming new ones by time."""
import datetime
import errno
import os
import re
import secrets
import stat
from pathlib import Path

# A write in progress is ``.<name>.<8 hex digits>.tmp`` beside the file it will replace.
TEMPORARY_NAME_EXTRA = len("." + ".0123abcd.tmp")  # bytes the temporary's name adds to the file's
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}\.tmp")


def resolved(path: Path) -> Path:
    """The file ``path`` names, through any symbolic links: a write replaces the target, never the
    link, and its temporary lies on the target's file system, where the rename can happen."""
    return Path(os.path.realpath(path))


def atomic_write_text(path: Path, text: str) -> None:
    """Writes a temporary file beside ``path``, fsyncs it, renames it over ``path`` and fsyncs the
    folder: a reader (or a crash) sees the old content or the new, never a mix; nothing is left
    behind on failure. A new file gets the mode ``open()`` gives (0666 less the umask); a rewritten
    one keeps its mode."""
    path = resolved(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = None
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "w") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _create_temporary(path: Path) -> tuple[int, Path]:
    # os.open applies the umask; tempfile.mkstemp would make the file 0600 whatever the umask says.
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path))


def _fsync_folder(folder: Path) -> None:
    """Makes the rename durable: until the folder is synced, a power cut may bring the old file back."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # folders some file systems cannot sync
            raise
    finally:
        os.close(fd)


def remove_temporaries(path: Path) -> list[Path]:
    """Removes what writes of ``path`` left behind when killed mid-way (SIGKILL, a power cut) and
    returns them. Only for a caller that knows no other write of ``path`` is under way (the results
    lock)."""
    path = resolved(path)
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    removed = []
    for name in names:
        match = _TEMPORARY.fullmatch(name)
        if match and match["name"] == path.name:
            (path.parent / name).unlink(missing_ok=True)
            removed.append(path.parent / name)
    return removed


def timestamped_path(folder: Path, prefix: str, suffix: str = ".csv") -> Path:
    """``folder/<prefix>-YYYYMMDD-HHMMSS<suffix>``: a new file name for each run."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(folder) / f"{prefix}-{stamp}{suffix}"
