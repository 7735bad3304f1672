"""What a result was measured on: CPU, threads, load, GPU, library versions, peak memory.

Every result JSON carries ``describe()`` so a figure can be read against its machine. The machines
here are shared (2 cores, several users), so the 1-minute load average is recorded before and after
a run: a ratio taken in one run holds under load, an absolute figure does not.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

LIBRARIES = ("gamma-rt", "numpy", "onnxruntime", "llama-cpp-python", "torch", "transformers", "onnx", "gguf", "soundfile",
             "soxr", "matplotlib")


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


def describe(threads: int) -> dict:
    """The machine block of a result file."""
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
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
