"""The worker process: measures the points it is sent, one at a time, in its own CUDA context.

It answers each point with a record whose ``status`` is ``ok``, ``oom`` (a result: the point does
not fit) or ``error`` (with the message). After every point it frees what the point held and empties
the allocator's cache, and on CUDA records what the allocator still holds beyond what it held
before the point (``held_after_mib``). The runner retires a worker after an error, which may leave
a broken context, and after a point that left memory held, which the next point would count.
"""
import ctypes
import gc
import os
import signal
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from profiler.results.schema import PointSpec
from profiler.run.faults import FAULT_ENV, inject_start_fault, with_injected_faults
from profiler.run.measure import measure_point, prime_process
from profiler.run.oom import oom_columns
from profiler.run.precision import matmul_arithmetic
from profiler.run.turns import NO_TURNS, GpuTurns, NoTurns, turn_lock_path
from profiler.trackers.peak_rate import PeakRateCache, PeakRates
from profiler.trackers.timing import MeasurementBudget
from profiler.units import MIB

PR_SET_PDEATHSIG = 1  # from linux/prctl.h
# Inductor's own knob for its pool of compile workers, and its own cap on their number.
COMPILE_THREADS_ENV = "TORCHINDUCTOR_COMPILE_THREADS"
MAX_COMPILE_THREADS = 32
# What the worker leaves to the runner: it stops the sweep between points on either.
WORKER_HELD_SIGNALS = {signal.SIGINT, signal.SIGHUP}
# This process's device at its peaks, per arithmetic: measured at the first point that needs one.
PEAK_RATES = PeakRateCache()


@dataclass(frozen=True)
class GpuAssignment:
    """The one GPU a worker may see."""

    index: int  # as rows record it: the GPU's index on its host (--gpus, or Ray's GPU id on its node)
    visible_devices: str | None = None  # CUDA_VISIBLE_DEVICES for the worker; None keeps the inherited one


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    # The CPU allocator reports exhaustion as a plain RuntimeError.
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def _release_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _allocated_mib(device: str) -> float | None:
    """What this process's caching allocator has handed out and not had back; None off CUDA."""
    return torch.cuda.memory_allocated() / MIB if device == "cuda" else None


def _freeze_survivors() -> None:
    """Moves every object alive now out of the collector's sight (``gc.freeze``). A worker collects
    before each point so that its memory figures start from nothing; a full collection walks the
    few hundred thousand objects torch's import and a first step leave, a quarter of a second per
    call on a CPU core, twice a point. Frozen (at start-up and after the first point), a collection
    walks only what was made since: the last point's model and batch, which it still frees."""
    gc.collect()
    gc.freeze()


def limit_device_memory(limit_mib: float, nvml_reader) -> None:
    """Lets the allocator use what a card of ``limit_mib`` would leave it: the card's memory less what
    this process already holds outside the allocator (the CUDA context, loaded kernels), as NVML reads."""
    held_mib = nvml_reader.read_mib() if nvml_reader is not None else 0.0
    total_mib = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / MIB
    if limit_mib <= held_mib:
        raise ValueError(f"a {limit_mib / 1024:g} GiB budget is below the {held_mib:.0f} MiB the CUDA context already holds")
    torch.cuda.set_per_process_memory_fraction(min(1.0, (limit_mib - held_mib) / total_mib))


def point_message(point: PointSpec, budget: MeasurementBudget, memory_limit_mib: float | None = None,
                  memory_snapshot_dir: Path | None = None) -> dict:
    """What the runner sends a worker for one point, in plain values. ``memory_limit_mib``: the
    device memory of a smaller card to emulate; ``memory_snapshot_dir``: where the point's memory
    snapshot goes (profiler/run/snapshots.py)."""
    return {"point": point.as_dict(), "budget": asdict(budget), "memory_limit_mib": memory_limit_mib,
            "memory_snapshot_dir": None if memory_snapshot_dir is None else str(memory_snapshot_dir)}


def peak_rates_for(point: PointSpec, cache: PeakRateCache = PEAK_RATES) -> PeakRates:
    """The peak rates of the point's arithmetic on this process's device, measured at the first
    point of the arithmetic. A failure is the point's error, never taken for its out-of-memory."""
    try:
        return cache.get(*matmul_arithmetic(point.dtype), point.device)
    except Exception as exc:  # noqa: BLE001 - re-raised with what failed
        raise RuntimeError(f"measuring the peak rates failed: {type(exc).__name__}: {exc}") from exc


def measure_safely(point: PointSpec, budget: MeasurementBudget, nvml_reader, prime: bool, measure=measure_point,
                   memory_limit_mib: float | None = None, snapshot_dir: Path | None = None,
                   peak_rates: PeakRateCache = PEAK_RATES, turns: GpuTurns | NoTurns = NO_TURNS,
                   compile_cores: frozenset[int] | None = None) -> dict:
    """``turns``: the GPU's turns where lanes share it (profiler/run/turns.py); ``compile_cores``:
    where a step compiles (measure.on_cores)."""
    waited_before_s, shared_waited_before_s = turns.waited_s, turns.shared_waited_s
    allocated_before_mib = _allocated_mib(point.device)
    try:
        # Priming times nothing: in shared turns, beside other lanes' building and compiling.
        started = time.perf_counter()
        if prime:
            prime_process(point, turns)
            _release_memory(point.device)
        prime_s = time.perf_counter() - started if prime else 0.0
        with turns.turn():  # the peak rates are timed
            # Before a memory limit applies: the probes' buffers are not the point's memory.
            started = time.perf_counter()
            peak = peak_rates_for(point, peak_rates)
            peak_rate_s = time.perf_counter() - started
        if memory_limit_mib is not None and point.device == "cuda":
            limit_device_memory(memory_limit_mib, nvml_reader)
        record = measure(point, budget, nvml_reader, peak=peak, snapshot_dir=snapshot_dir, turns=turns,
                         compile_cores=compile_cores)
        record["status"] = "ok"
        record["prime_s"] = prime_s
        record["peak_rate_s"] = peak_rate_s
    except Exception as exc:  # noqa: BLE001 - every failure becomes a recorded result
        status = "oom" if _is_out_of_memory(exc) else "error"
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        record = {"status": status, "error": f"{type(exc).__name__}: {message}"}
        if status == "oom" and point.device == "cuda" and memory_limit_mib is None:
            record.update(oom_columns(str(exc)))  # whether the card alone had room for it
        if status == "error":
            record["traceback"] = traceback.format_exc(limit=8)
    finally:
        _release_memory(point.device)
    if allocated_before_mib is not None:
        # Not zero where something still references the point's tensors: a plug-in's cache, an OOM
        # inside backward() (pytorch/pytorch#82218), or, before the footprint probe saved detached
        # aliases, an OOM in the probe's forward (61 GiB after CosRec's training at L = 500).
        record["held_after_mib"] = _allocated_mib(point.device) - allocated_before_mib
    record["worker_pid"] = os.getpid()
    if turns is not NO_TURNS:
        record["turn_wait_s"] = turns.waited_s - waited_before_s
        record["shared_turn_wait_s"] = turns.shared_waited_s - shared_waited_before_s
    return record


def _die_with_parent(parent_pid: int) -> None:
    """Asks Linux to kill this process when the runner dies, however it dies (SIGKILL too), so no
    orphan keeps the GPU busy or overlaps a resumed sweep."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the pipe's EOF still ends the loop
        return
    # The runner died while this process was importing, before the request took effect: init or a
    # subreaper (not necessarily pid 1) adopted it.
    if os.getppid() != parent_pid:
        os._exit(1)


def cores_to_compile_on(cpu: int | None, measuring_cores: frozenset[int] = frozenset()) -> frozenset[int] | None:
    """The cores a worker to be pinned to ``cpu`` builds and compiles on (measure.on_cores): all it
    was given but those other workers measure on (``measuring_cores``: a lane of another GPU takes
    no turns with this one); None for a worker left unpinned. Inductor sizes its pool of compile
    workers by the process's cores when it is first imported, which is after the pinning; told
    here, before, it takes one per core (as unpinned, capped at 32), unless the user chose a number."""
    if cpu is None:
        return None
    cores = frozenset(os.sched_getaffinity(0)) - (measuring_cores - {cpu})
    os.environ.setdefault(COMPILE_THREADS_ENV, str(min(MAX_COMPILE_THREADS, len(cores))))
    return cores


def priming_key(point: PointSpec) -> tuple:
    """What a prime loads kernels for: the model variant in its arithmetic."""
    return point.model, point.attention, point.profile, point.device, point.dtype


def _prime_ahead(point: PointSpec, turns: GpuTurns | NoTurns = NO_TURNS) -> tuple | None:
    """Primes for ``point`` while the worker starts, in shared ``turns``; the priming key, or None
    where it failed (the first point then primes again and reports the failure as its own)."""
    try:
        prime_process(point, turns)
        return priming_key(point)
    except Exception:  # noqa: BLE001 - measured again, with its error recorded, at the first point
        return None
    finally:
        _release_memory(point.device)


def worker_main(conn, device: str, cpu: int | None, threads: int, parent_pid: int,
                gpu: GpuAssignment | None = None, start_off: frozenset[int] = frozenset(),
                prime: dict | None = None, share_gpu: bool = False, take_turns: bool = False) -> None:
    """Entry point of the worker process: receive (point, budget) dicts, send records, until None.

    ``cpu`` pins the process to one core. A training step of a small model is bound by the host
    launching kernels, and a launching thread that migrates between cores makes its times jitter.
    Until its first point the worker keeps off ``cpu`` and the cores in ``start_off`` (those other
    workers measure on). ``gpu``: the one GPU this worker sees; its records name it. ``prime``: the
    point (as a dict) the worker expects first, primed for during start-up (see ``_serve``).
    ``share_gpu``: other lanes measure on this GPU; the worker measures in the GPU's turns.
    ``take_turns``: so it does beside its own lane's spares, which prime in shared turns.
    """
    # Ctrl-C and a terminal's hangup go to the whole process group; the runner decides when to
    # stop, and the point in flight finishes so its measurement is kept. The runner started this
    # process with them blocked: ignoring them drops any that came during the imports.
    for signum in WORKER_HELD_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_HELD_SIGNALS)
    _die_with_parent(parent_pid)
    try:
        _serve(conn, device, cpu, threads, gpu, start_off, PointSpec(**prime) if prime else None, share_gpu,
               take_turns)
    except (BrokenPipeError, ConnectionResetError):  # the runner is gone: nothing waits for results
        pass


def _serve(conn, device: str, cpu: int | None, threads: int, gpu: GpuAssignment | None,
           start_off: frozenset[int], prime: PointSpec | None = None, share_gpu: bool = False,
           take_turns: bool = False) -> None:
    """Starts (its GPU, threads, core, CUDA context, NVML), says whether it is ready, then measures.

    On CUDA a worker started ahead of need is told the point it will most likely measure first, and
    primes for it (``prime_process``) before it says it is ready: seconds of lazy kernel loading
    on the starting cores, while another worker measures, rather than on the sweep's critical path.
    A first point of another variant or arithmetic primes again.
    """
    if gpu is not None and gpu.visible_devices is not None:
        # Before CUDA initialises (torch reads it once, at the first CUDA call): device 0 is that GPU.
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu.visible_devices
    torch.set_num_threads(threads)
    compile_cores = cores_to_compile_on(cpu, start_off)
    if cpu is not None:
        # Started ahead of need: keep the import and CUDA start-up off the cores workers measure on.
        starting_cores = os.sched_getaffinity(0) - {cpu} - set(start_off)
        if starting_cores:
            os.sched_setaffinity(0, starting_cores)
    nvml_reader, nvml_unavailable = None, None
    gpu_columns = {} if gpu is None else {"gpu_index": gpu.index}
    try:
        if device == "cuda":
            if torch.cuda.is_initialized():
                raise RuntimeError("CUDA was initialised before the worker chose its GPU")
            torch.cuda.init()
            torch.zeros(1, device="cuda")  # create the context, so the NVML baseline includes it
            # Load cuDNN and create the cuBLAS handle now, host-side work that a worker started
            # ahead of need does while another measures, rather than inside its first point.
            torch.backends.cudnn.version()
            torch.cuda.current_blas_handle()
            properties = torch.cuda.get_device_properties(torch.cuda.current_device())
            # A worker given no GPU of its own runs on this process's current one, as --gpus numbers them.
            gpu_columns.setdefault("gpu_index", torch.cuda.current_device())
            # torch prints the UUID bare; NVML and nvidia-smi prefix it
            gpu_columns.update(gpu_uuid=f"GPU-{properties.uuid}", device_name=properties.name)
            try:
                from profiler.trackers.nvml import NvmlMemoryReader

                nvml_reader = NvmlMemoryReader(uuid=gpu_columns["gpu_uuid"])
                gpu_columns["gpu_uuid"] = nvml_reader.uuid
            except Exception as exc:  # noqa: BLE001 - NVML is optional; the rest is measured, the reason kept
                nvml_unavailable = f"unavailable ({type(exc).__name__}: {exc})"
        if os.environ.get(FAULT_ENV):
            inject_start_fault()
    except Exception as exc:  # noqa: BLE001 - a worker that cannot start says why
        conn.send({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return
    in_turns = (share_gpu or take_turns) and device == "cuda"
    turns = GpuTurns(turn_lock_path(gpu_columns["gpu_uuid"])) if in_turns else NO_TURNS
    primed_for = _prime_ahead(prime, turns) if prime is not None and device == "cuda" else None
    _freeze_survivors()
    conn.send({"ready": True})
    frozen_after_first_point = False
    pinned = cpu is None
    primed = device != "cuda"  # lazy kernel loading is a CUDA matter
    measure = with_injected_faults(measure_point, share_gpu) if os.environ.get(FAULT_ENV) else measure_point
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the runner is gone (killed): nothing is waiting for results
            break
        if message is None:
            break
        if not pinned:
            os.sched_setaffinity(0, {cpu})
            pinned = True
        point = PointSpec(**message["point"])
        primed = primed or primed_for == priming_key(point)
        budget = MeasurementBudget(**message["budget"])
        snapshot_dir = message.get("memory_snapshot_dir")
        record = measure_safely(point, budget, nvml_reader, prime=not primed, measure=measure,
                                memory_limit_mib=message.get("memory_limit_mib"),
                                snapshot_dir=Path(snapshot_dir) if snapshot_dir is not None else None, turns=turns,
                                compile_cores=compile_cores)
        primed = True
        if nvml_unavailable:
            record["nvml_source"] = nvml_unavailable
        record["worker_cpu"] = cpu
        record["torch_threads"] = threads
        record.update(gpu_columns)
        conn.send(record)
        if not frozen_after_first_point:
            # The first point creates what lives on (kernels' handles, dispatch and tracing caches);
            # frozen while the runner stores its row.
            _freeze_survivors()
            frozen_after_first_point = True
    if nvml_reader is not None:
        nvml_reader.close()
