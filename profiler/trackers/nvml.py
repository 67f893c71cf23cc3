"""Device memory as nvidia-smi sees it: this process's usage, sampled by a background thread.

The torch allocator's counters miss the CUDA context, kernels' modules and library workspaces;
NVML's per-process figure includes them. Where the driver does not report per-process usage
(some containers), the device-wide used memory is the fallback and the source says so.
"""
import os
import threading

MIB = 2**20


class NvmlMemoryReader:
    """Reads this process's device memory in MiB; ``source`` says what the number covers.

    ``uuid`` picks the GPU: NVML numbers GPUs in PCI order and ignores CUDA_VISIBLE_DEVICES, so in a
    process that sees one GPU of several, NVML's index 0 is not necessarily CUDA's device 0.
    """

    def __init__(self, device_index: int = 0, uuid: str | None = None):
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        if uuid is not None:
            self._handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
        else:
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        self._pid = os.getpid()
        self.source = "process" if self._process_bytes() is not None else "device"

    @property
    def uuid(self) -> str:
        """The GPU's UUID as nvidia-smi shows it ('GPU-...')."""
        return self._nvml.nvmlDeviceGetUUID(self._handle)

    def _process_bytes(self) -> int | None:
        for proc in self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle):
            if proc.pid == self._pid and proc.usedGpuMemory is not None:
                return proc.usedGpuMemory
        return None

    def read_mib(self) -> float:
        if self.source == "process":
            used = self._process_bytes()
            if used is not None:
                return used / MIB
        return self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / MIB

    def close(self) -> None:
        self._nvml.nvmlShutdown()


class NvmlPeakSampler:
    """Context manager: samples ``reader`` every ``interval_s`` and keeps the peak.

    Sampling runs beside the measured steps; NVML calls release the GIL, so the host thread that
    launches kernels is barely disturbed. Memory held by the caching allocator only grows within a
    point, so a few-millisecond interval does not miss the peak.
    """

    def __init__(self, reader: NvmlMemoryReader, interval_s: float = 0.005):
        self._reader = reader
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak_mib = 0.0
        self.samples = 0

    def _sample(self) -> None:
        self.peak_mib = max(self.peak_mib, self._reader.read_mib())
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    def __enter__(self) -> "NvmlPeakSampler":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
