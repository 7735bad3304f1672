"""What a result was measured on: CPU, threads, load, GPU, library versions, peak memory.

Every result JSON (bench/, quant's fidelity report) carries ``describe()`` so a figure can be read against its machine. The machines
here are shared (2 cores, several users), so the 1-minute load average is recorded before and after
a run: a ratio taken in one run holds under load, an absolute figure does not.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

LIBRARIES = ("gamma-rt", "numpy", "onnxruntime", "llama-cpp-python", "torch", "transformers", "onnx", "gguf", "soundfile",
             "soxr", "matplotlib")
CGROUP_ROOT = Path("/sys/fs/cgroup")
OWN_CGROUP = Path("/proc/self/cgroup")
DECODER_THREADS_MAX = 8


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    """1, 5 and 15-minute load averages (runnable processes); [] where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def library_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in LIBRARIES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def gpu() -> dict | None:
    """The first CUDA device (name, capability, memory): from torch where this process loaded it, else from
    nvidia-smi (a runtime-only process, llama.cpp on the GPU, has no torch); None without one."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "driver": _nvidia_smi("driver_version"),
        }
    name = _nvidia_smi("name")
    if name is None:
        return None
    memory_mib = _nvidia_smi("memory.total,nounits")
    return {"name": name, "capability": _nvidia_smi("compute_cap"),
            "memory_gib": round(float(memory_mib) / 1024, 1) if memory_mib else None,
            "driver": _nvidia_smi("driver_version")}


def affinity_cores() -> int:
    """Logical CPUs this process may be scheduled on (its affinity, as taskset or a container's cpuset sets it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_quota(cgroup_root: Path = CGROUP_ROOT, own_cgroup: Path = OWN_CGROUP) -> float | None:
    """The CPU time this process's cgroup may use, in cores (cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us``
    over ``cpu.cfs_period_us``): 1.5 for ``150000 100000``; None where there is no limit or no cgroup."""
    for folder in _cgroup_folders(cgroup_root, own_cgroup):
        v2 = _read_numbers(folder / "cpu.max")
        if v2 is not None:
            return v2[0] / v2[1] if len(v2) == 2 and v2[0] > 0 and v2[1] > 0 else None
        quota, period = _read_numbers(folder / "cpu.cfs_quota_us"), _read_numbers(folder / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            return quota[0] / period[0] if quota[0] > 0 and period[0] > 0 else None
    return None


def available_cores() -> int:
    """Cores this process can actually use: its affinity, cut to its cgroup's CPU quota (rounded up: 1.5
    cores of quota spread over 2 CPUs still runs 2 threads at once)."""
    cores = affinity_cores()
    quota = cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


def default_decoder_threads(cores: int | None = None) -> int:
    """The decoder's (llama.cpp's) threads when --threads is not given: half the available cores, at least
    1 and at most DECODER_THREADS_MAX. llama.cpp's threads meet at a spinning barrier after every graph
    node, so one thread without a core stalls all the others: on 2 shared cores 2 threads answered a
    question 3-4x slower idle and up to 23x slower beside busy processes than 1 (issue 23). Half leaves a
    core per thread for the audio encoders and whatever else the machine runs, and on a machine with
    two hyperthreads per core it is one thread per physical core. Past 8 threads a decode step, which is
    bound by memory bandwidth, gains little. 2 cores: 1 thread; 4: 2; 16: 8; 64: 8."""
    cores = available_cores() if cores is None else cores
    return max(1, min(DECODER_THREADS_MAX, cores // 2))


def describe(threads: int) -> dict:
    """The machine block of a result file."""
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "affinity_cpus": affinity_cores(),
        "cpu_quota_cores": cpu_quota(),
        "available_cores": available_cores(),
        "threads": threads,
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "load_average_start": load_average(),
        "gpu": gpu(),
        "versions": library_versions(),
    }


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, MiB.

    Linux's VmHWM first: ru_maxrss survives exec, so a child started from a big parent would report the
    parent's peak as its own.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


def peak_device_mib() -> float | None:
    """Peak memory torch's CUDA allocator has held, MiB; None without CUDA (ORT CPU and llama.cpp CPU use none)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


class DeviceMemoryWatch:
    """Peak GPU memory during a ``with`` block, sampled from nvidia-smi every ``interval`` seconds.

    llama.cpp's and ONNX Runtime's CUDA buffers are not torch's, so torch's allocator counters miss them.
    ``peak_mib`` is this process's own use where nvidia-smi lists it by pid, else the growth of the device's
    used memory over its level at the start (``source`` says which); None without nvidia-smi.
    """

    def __init__(self, interval: float = 0.5):
        self.interval, self.peak_mib, self.source = interval, None, None
        self._stop = threading.Event()
        self._thread = None
        self._start_used = None

    def __enter__(self) -> "DeviceMemoryWatch":
        if shutil.which("nvidia-smi"):
            self._start_used = _float(_nvidia_smi("memory.used,nounits"))
            self._thread = threading.Thread(target=self._poll, name="device-memory-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._sample()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        own = process_gpu_mib(_compute_apps(), os.getpid())
        if own is not None:
            mib, source = own, "this process (nvidia-smi --query-compute-apps)"
        else:
            used = _float(_nvidia_smi("memory.used,nounits"))
            if used is None or self._start_used is None:
                return
            mib, source = used - self._start_used, "device memory used above the level at the start (nvidia-smi)"
        if self.peak_mib is None or mib > self.peak_mib:
            self.peak_mib, self.source = mib, source


def process_gpu_mib(compute_apps: str | None, pid: int) -> float | None:
    """MiB that ``pid`` holds in ``nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits``
    output, summed over GPUs; None when it is not listed (or inside a container that shows host pids)."""
    total = None
    for line in (compute_apps or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and _float(parts[1]) is not None:
            total = (total or 0.0) + float(parts[1])
    return total


def _compute_apps() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _cgroup_folders(cgroup_root: Path, own_cgroup: Path) -> list[Path]:
    """This process's own cgroup folders (from /proc/self/cgroup), then the root one: inside a container the
    root is usually the container's own cgroup."""
    folders = []
    try:
        lines = own_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:  # "0::/user.slice/x.scope" (v2) or "4:cpu,cpuacct:/docker/abc" (v1)
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers in ("", "cpu") or "cpu" in controllers.split(","):
            base = cgroup_root if controllers == "" else _v1_cpu_root(cgroup_root)
            folders.append(base / path.lstrip("/"))
    return folders + [cgroup_root, _v1_cpu_root(cgroup_root)]


def _v1_cpu_root(cgroup_root: Path) -> Path:
    for name in ("cpu,cpuacct", "cpu"):
        if (cgroup_root / name).is_dir():
            return cgroup_root / name
    return cgroup_root / "cpu"


def _read_numbers(path: Path) -> list[int] | None:
    """The integers in a cgroup file; [-1] for v2's "max" (no limit); None when it is absent or unreadable."""
    try:
        words = path.read_text().split()
    except OSError:
        return None
    try:
        return [-1 if w == "max" else int(w) for w in words] or None
    except ValueError:
        return None


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _nvidia_smi(field: str) -> str | None:
    try:
        field, _, unit = field.partition(",")  # "memory.total,nounits": the number alone
        fmt = "--format=csv,noheader" + (f",{unit}" if unit else "")
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", fmt],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
