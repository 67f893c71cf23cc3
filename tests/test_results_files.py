"""The results file under faults: names that cannot collide, malformed files, I/O errors, paths.

Each is one line naming the file and what is wrong, exit code 2, with every stored point kept and
no temporary or lock file left behind.
"""
import csv
import errno
import io
import json
import os
import stat
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from helpers import FAST_FLAGS, store_points

from profiler.cli import main
from profiler.results.files import atomic_write_text
from profiler.results.schema import COLUMNS
from profiler.results.store import ResultsFileError, ResultsStore, read_results, sidecar_path

SASREC = ["--models", "sasrec", *FAST_FLAGS]


def leftovers(folder: Path) -> list[str]:
    """Temporary and lock files in ``folder``: none may outlive a command."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".tmp", ".lock")))


def assert_one_line_error(capsys, args, *fragments, alone: bool = True) -> None:
    """``seqprof args`` exits with 2 and ends with one error line holding every fragment; ``alone``:
    the line is all it prints (nothing was measured)."""
    code = main(args)
    printed = capsys.readouterr()
    assert code == 2, printed
    lines = [line for line in (printed.out + printed.err).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("seqprof: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in printed.err, printed
    assert len(lines) == 1 or not alone, printed
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


# --- the lock -------------------------------------------------------------------------------------

@pytest.mark.parametrize("opening", ["create", "resume"])
def test_an_open_store_holds_the_lock_before_anything_is_read(tmp_path, opening):
    out = tmp_path / "r.csv"
    if opening == "resume":
        store_points(out, [8])
    first = getattr(ResultsStore, opening)(out)  # no `with`: opening alone must hold the lock
    try:
        with pytest.raises(ResultsFileError, match="is in use by another sweep"):
            getattr(ResultsStore, opening)(out)
    finally:
        first.close()
    getattr(ResultsStore, opening)(out).close()  # released: the next one may open it
    assert leftovers(tmp_path) == []


# --- the sidecar's name -----------------------------------------------------------------------------

def test_two_results_files_never_share_a_sidecar_and_none_is_another_ones(tmp_path, capsys):
    csv_path, tsv_path = tmp_path / "x.csv", tmp_path / "x.tsv"
    store_points(csv_path, [8])
    store_points(tsv_path, [12])
    assert sidecar_path(csv_path) != sidecar_path(tsv_path)
    assert json.loads(sidecar_path(csv_path).read_text())["runs"][0]["lengths"] == [8]
    assert json.loads(sidecar_path(tsv_path).read_text())["runs"][0]["lengths"] == [12]
    for name in ("x.meta.json", "y.csv.meta.json", "x.csv.lock"):
        assert_one_line_error(capsys, ["sweep", "--lengths", "8", *SASREC, "--out", str(tmp_path / name)],
                              "is reserved for")
        assert not (tmp_path / name).exists()
    assert read_results(csv_path)["seq_len"].tolist() == [8]


def test_a_sidecar_under_its_old_name_is_named_not_ignored(tmp_path, capsys):
    out = tmp_path / "r.csv"
    store_points(out, [8])
    sidecar_path(out).rename(tmp_path / "r.meta.json")
    assert_one_line_error(capsys, ["sweep", "--out", str(out), "--resume", *SASREC],
                          "under the old name", "r.meta.json", "r.csv.meta.json")


# --- malformed results files ----------------------------------------------------------------------

def set_cell(path: Path, row: int, column: str, value: str) -> None:
    """Sets one cell; ``row`` counts as a spreadsheet does (the header is row 1)."""
    rows = list(csv.reader(io.StringIO(path.read_text())))
    rows[row - 1][rows[0].index(column)] = value
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    path.write_text(buffer.getvalue())


def cut_last_row(path: Path) -> None:
    text = path.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    path.write_text(text[: len(text.rstrip("\n")) - len(last) // 2])


def repeat_row(path: Path, row: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines) + lines[row - 1])


MALFORMED = {
    "a key that is not a number": (lambda p: set_cell(p, 3, "seq_len", "abc"),
                                   "row 3, column seq_len: 'abc' is not an integer"),
    "a missing key": (lambda p: set_cell(p, 2, "batch_size", ""), "row 2, column batch_size: missing"),
    "a fractional key": (lambda p: set_cell(p, 4, "seed", "1.5"), "row 4, column seed: 1.5 is not an integer"),
    "a length of 0": (lambda p: set_cell(p, 2, "seq_len", "0"), "row 2, column seq_len: 0 is not a positive length"),
    "a negative length": (lambda p: set_cell(p, 4, "seq_len", "-16"),
                          "row 4, column seq_len: -16 is not a positive length"),
    "a missing mode": (lambda p: set_cell(p, 3, "mode", ""), "row 3, column mode: missing"),
    "an unknown status": (lambda p: set_cell(p, 2, "status", "fine"), "row 2, column status: 'fine' is not one of"),
    "a last row cut short": (cut_last_row, "row 4, column "),
    "a point stored twice": (lambda p: repeat_row(p, 3), "row 5: the same point as row 3"),
}
COMMANDS = {
    "sweep --resume": lambda p: ["sweep", "--lengths", "8,12,16,20", *SASREC, "--out", str(p), "--resume"],
    "report": lambda p: ["report", str(p)],
    "plot": lambda p: ["plot", str(p), "--plots-dir", str(p.parent / "plots")],
    "reproduce": lambda p: ["reproduce", "convrec", "--from-results", str(p), "--plots-dir", str(p.parent / "plots")],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("fault", MALFORMED)
def test_a_malformed_results_file_is_one_line_naming_the_row_and_column(tmp_path, fault, command, capsys):
    out = tmp_path / "r.csv"
    store_points(out, [8, 12, 16])
    damage, problem = MALFORMED[fault]
    damage(out)
    content = out.read_bytes()
    assert_one_line_error(capsys, COMMANDS[command](out), f"results file {out}, {problem}")
    assert out.read_bytes() == content  # a resume neither repairs nor duplicates anything
    assert not (tmp_path / "plots").exists() and leftovers(tmp_path) == []


def test_a_quote_left_open_names_the_row_it_opens(tmp_path):
    out = tmp_path / "r.csv"
    store_points(out, [8, 12])
    out.write_text(out.read_text() + 'sasrec,"attention\n')
    with pytest.raises(ResultsFileError, match=r"is corrupted at row 4: unexpected end of data \(cut short\?\)"):
        read_results(out)


def test_a_row_cut_short_names_the_first_missing_column(tmp_path):
    out = tmp_path / "r.csv"
    store_points(out, [8])
    header, row = out.read_text().splitlines()
    cut = COLUMNS.index("status")
    out.write_text(f"{header}\n{','.join(row.split(',')[:cut])}")  # the fields before status
    with pytest.raises(ResultsFileError, match=rf"row 2, column status: missing; the row has {cut} of \d+ fields"):
        read_results(out)


# --- I/O faults -----------------------------------------------------------------------------------

def test_a_full_disk_stops_the_sweep_with_one_line_and_keeps_every_stored_point(tmp_path, monkeypatch, capsys):
    out = tmp_path / "r.csv"
    real_fsync = os.fsync

    def fsync_until_a_point_is_stored(fd):
        # The disk fills up once the file holds a point: the next point's write fails.
        if not stat.S_ISDIR(os.fstat(fd).st_mode) and out.exists() and len(out.read_text().splitlines()) >= 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr("profiler.results.files.os.fsync", fsync_until_a_point_is_stored)
    assert_one_line_error(capsys, ["sweep", "--lengths", "8,12,16", *SASREC, "--out", str(out)],
                          f"cannot write results file {out}: No space left on device", "is kept", alone=False)
    kept = read_results(out)
    assert kept["seq_len"].tolist() == [8] and set(kept["status"]) == {"ok"}
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("length", [235, 300])
def test_a_name_too_long_for_the_file_system_is_refused_before_measuring(tmp_path, length, capsys):
    out = tmp_path / ("r" * (length - 4) + ".csv")
    assert_one_line_error(capsys, ["sweep", "--lengths", "8", *SASREC, "--out", str(out)],
                          "the name is too long for the file system")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("resume", [False, True], ids=["new", "resume"])
@pytest.mark.parametrize("where", ["lock", "sidecar"])
def test_a_directory_where_the_lock_or_the_sidecar_goes_is_one_line(tmp_path, where, resume, capsys):
    out = tmp_path / "r.csv"
    if resume:
        store_points(out, [8])
        sidecar_path(out).unlink()
    content = out.read_bytes() if resume else None
    blocking = out.with_name(out.name + ".lock") if where == "lock" else sidecar_path(out)
    blocking.mkdir()
    args = ["sweep", "--lengths", "8,12", *SASREC, "--out", str(out)] + (["--resume"] if resume else [])
    assert_one_line_error(capsys, args, str(blocking), "is a directory")
    assert (out.read_bytes() == content) if resume else not out.exists()
    assert blocking.is_dir() and leftovers(tmp_path) == [blocking.name] * (where == "lock")


def chattr(flag: str, path: Path) -> bool:
    try:
        return subprocess.run(["chattr", flag, str(path)], capture_output=True, check=False).returncode == 0
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("what", ["results file", "sidecar", "folder"])
def test_an_immutable_file_or_folder_is_one_line_and_changes_nothing(tmp_path, what, capsys):
    # chattr +i binds root too, where read-only permission bits would not.
    folder = tmp_path / "data"
    folder.mkdir()
    out = folder / "r.csv"
    store_points(out, [8])
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    target = {"results file": out, "sidecar": sidecar_path(out), "folder": folder}[what]
    if not chattr("+i", target):
        pytest.skip("chattr +i is not available or not permitted here")
    try:
        assert_one_line_error(capsys, ["sweep", "--lengths", "8,12", *SASREC, "--out", str(out), "--resume"],
                              "cannot ", str(target), "ermi" if what != "folder" else "not permitted")
    finally:
        chattr("-i", target)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_read_only_folder_is_one_line_for_a_user_that_permissions_bind(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes read-only folders; the immutable test covers root")
    out = tmp_path / "r.csv"
    store_points(out, [8])
    tmp_path.chmod(0o555)
    try:
        assert_one_line_error(capsys, ["sweep", "--lengths", "8,12", *SASREC, "--out", str(out), "--resume"],
                              "cannot ", "ermission denied")
    finally:
        tmp_path.chmod(0o755)
    assert read_results(out)["seq_len"].tolist() == [8]


@pytest.mark.parametrize(
    "content, problem",
    [
        ("[]", "a JSON object was expected"),
        ('"runs"', "a JSON object was expected"),
        ('{"runs": 5}', "'runs' is not a list"),
        ('{"runs": [1]}', "run 1 is not a JSON object"),
        ('{"runs": [{"lengths": "8,12"}]}', "run 1's lengths is not a list of positive integers"),
        ('{"runs": [{"batch_size": "4"}]}', "run 1's batch_size is not a positive integer"),
        ('{"runs": [{"models": "sasrec"}]}', "run 1's models is not a list of names"),
        ('{"runs": [', "is corrupted"),
        (b"\xff\xfe", "is corrupted: not UTF-8"),
    ],
)
def test_a_sidecar_of_the_wrong_shape_is_one_line_naming_it(tmp_path, content, problem, capsys):
    out = tmp_path / "r.csv"
    store_points(out, [8])
    meta = sidecar_path(out)
    meta.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = out.read_bytes(), meta.read_bytes()
    assert_one_line_error(capsys, ["sweep", "--out", str(out), "--resume", *FAST_FLAGS],
                          f"metadata file {meta}", problem)
    assert (out.read_bytes(), meta.read_bytes()) == before and leftovers(tmp_path) == []


# --- paths ----------------------------------------------------------------------------------------

def test_resume_through_a_symbolic_link_updates_the_target_and_keeps_the_link(tmp_path):
    real = tmp_path / "data" / "real.csv"
    real.parent.mkdir()
    store_points(real, [8])
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    assert main(["sweep", "--lengths", "8,12", *SASREC, "--out", str(link), "--resume"]) == 0
    assert link.is_symlink() and link.resolve() == real
    assert read_results(real)["seq_len"].tolist() == [8, 12]
    assert len(json.loads(sidecar_path(real).read_text())["runs"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "link.csv"]
    assert sorted(p.name for p in real.parent.iterdir()) == ["real.csv", "real.csv.meta.json"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_result_files_get_the_mode_the_umask_gives_and_a_rewrite_keeps_it(tmp_path, umask):
    previous = os.umask(umask)
    try:
        out = tmp_path / "r.csv"
        store_points(out, [8])
        for path in (out, sidecar_path(out)):
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
        out.chmod(0o604)
        atomic_write_text(out, out.read_text())
        assert stat.S_IMODE(out.stat().st_mode) == 0o604
    finally:
        os.umask(previous)


def test_a_temporary_file_left_by_a_killed_write_is_removed_when_the_file_is_next_opened(tmp_path):
    out = tmp_path / "r.csv"
    store_points(out, [8])
    stale = [tmp_path / ".r.csv.0badf00d.tmp", tmp_path / ".r.csv.meta.json.12345678.tmp"]
    unrelated = tmp_path / ".r.csv.x.0badf00d.tmp"  # a write of another file, r.csv.x
    for path in (*stale, unrelated):
        path.write_text("half a row")
    ResultsStore.resume(out).close()
    assert [p.exists() for p in stale] == [False, False] and unrelated.exists()
    assert read_results(out)["seq_len"].tolist() == [8]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / "r.csv"
    out.write_text("old\n")

    def replace_fails(src, dst):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr("profiler.results.files.os.replace", replace_fails)
    with pytest.raises(OSError):
        atomic_write_text(out, "new\n")
    assert out.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["r.csv"]


def test_the_committed_results_pass_the_reader_and_have_their_sidecars():
    for path in sorted(Path(__file__).resolve().parent.parent.glob("results/*.csv")):
        frame = read_results(path)
        assert frame["seq_len"].dtype == "int64" and len(frame) == len(pd.read_csv(path))
        assert sidecar_path(path).is_file(), path
