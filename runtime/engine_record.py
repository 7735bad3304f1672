"""Which GPU a TensorRT engine was built for, and whether it may be loaded on this one.

A serialized TensorRT engine only runs on the GPU architecture (compute capability) and the exact
TensorRT version that built it; loading it elsewhere fails deep inside TensorRT or, worse, runs wrong
tactics. So the bundle's manifest records, per engine folder, the builder's identity, and the runtime
compares it with the running GPU before deserializing anything. Pure Python: no tensorrt, no CUDA.

Manifest layout (``engines`` field), one entry per engine folder::

    "engines": {
      "nvidia-h100-80gb-hbm3-sm90-trt10.13.0": {
        "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "trt_version": "10.13.0",
        "timing_cache": "engines/<dir>/timing.cache",
        "components": {"temporal_encoder.fp16": {"file": "engines/<dir>/temporal_encoder.fp16.plan",
                        "sha256": "...", "bytes": 1, "source": "temporal_encoder", "source_sha256": "...",
                        "precision": "fp16", "cache_key": "...", "profile": {"mel": [[1,128,3000], [1,...], [4,...]]}}}
      }
    }
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gamma_rt.errors import EngineMismatch


@dataclass(frozen=True)
class GpuIdentity:
    """What an engine is tied to: the GPU model, its compute capability ("8.7", "9.0") and TensorRT's version."""

    name: str
    compute_capability: str
    trt_version: str

    @property
    def sm(self) -> str:
        """``"sm90"`` for compute capability 9.0."""
        return "sm" + self.compute_capability.replace(".", "")

    def engine_dir(self) -> str:
        """Folder name under ``BUNDLE/engines/``: ``<gpu-name>-sm<cc>-trt<version>``."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")
        return f"{slug}-{self.sm}-trt{self.trt_version}"

    @classmethod
    def from_record(cls, record: dict, where: str) -> "GpuIdentity":
        try:
            return cls(str(record["gpu"]), str(record["compute_capability"]), str(record["trt_version"]))
        except KeyError as e:
            raise EngineMismatch(f"{where}: engine record lacks field {e.args[0]!r}; rebuild with --rebuild") from None


def mismatches(built_for: GpuIdentity, running: GpuIdentity) -> list[str]:
    """Human-readable differences that make an engine unloadable here (empty when it fits)."""
    out = []
    if built_for.compute_capability != running.compute_capability:
        out.append(f"compute capability {built_for.compute_capability} vs this GPU's {running.compute_capability}")
    if built_for.trt_version != running.trt_version:
        out.append(f"TensorRT {built_for.trt_version} vs installed {running.trt_version}")
    if built_for.name != running.name:
        # Same architecture but another model (e.g. H100 PCIe vs SXM) still runs, but tactics were timed
        # on the other one; it is reported, and only blocks when the architecture differs too.
        out.append(f"built on {built_for.name!r}, running on {running.name!r}")
    return out


def find_engines(engines: dict, running: GpuIdentity, precision: str, manifest_path: str) -> dict:
    """The engine folder record that fits ``running`` and holds ``precision`` engines.

    Raises EngineMismatch naming what differs when the bundle holds engines but none fit, and
    when it holds none at all (the caller falls back to ONNX Runtime or rebuilds)."""
    if not engines:
        raise EngineMismatch(f"{manifest_path}: no TensorRT engines recorded; run `gamma-rt export engines BUNDLE`")
    reasons = []
    for dir_name, record in engines.items():
        where = f"{manifest_path}: engines.{dir_name}"
        built_for = GpuIdentity.from_record(record, where)
        blocking = [m for m in mismatches(built_for, running) if not m.startswith("built on")]
        if blocking:
            reasons.append(f"{dir_name} ({'; '.join(blocking)})")
            continue
        if not any(c.get("precision") == precision for c in record.get("components", {}).values()):
            reasons.append(f"{dir_name} (no {precision} engines)")
            continue
        return {"dir": dir_name, **record}
    raise EngineMismatch(
        f"{manifest_path}: no engine fits {running.name} {running.sm} TensorRT {running.trt_version} "
        f"at {precision}: {', '.join(reasons)}; rebuild with `gamma-rt export engines BUNDLE --rebuild` "
        "or run with --backend ort"
    )
