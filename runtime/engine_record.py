"""Which GPU a TensorRT engine was built for, and whether it may be loaded on this one.

A serialized TensorRT engine only runs on the GPU architecture (compute capability) and the exact
TensorRT version that built it (unless built version-compatible, below); loading it elsewhere fails deep inside TensorRT or, worse, runs wrong
tactics. So the bundle's manifest records, per engine folder, the builder's identity, and the runtime
compares it with the running GPU before deserializing anything. Pure Python: no tensorrt, no CUDA.

Manifest layout (``engines`` field), one entry per engine folder::

    "engines": {
      "nvidia-h100-80gb-hbm3-sm90-trt10.13.0": {
        "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "trt_version": "10.13.0",
        "timing_cache": "engines/<dir>/timing.cache",
        "components": {"temporal_encoder.fp16": {"file": "engines/<dir>/temporal_encoder.fp16.plan",
                        "sha256": "...", "bytes": 1, "source": "temporal_encoder", "source_sha256": "...",
                        "precision": "fp16", "cache_key": "...", "profile": {"mel": [[1,128,3000], [1,...], [4,...]]}}},
        "version_compatible": false, "lean_runtime_included": false
      }
    }

An engine built with ``VERSION_COMPATIBLE`` (``version_compatible``) also loads on a later TensorRT: any later
release of the same major, and TensorRT 11 loads version-compatible TensorRT 10 engines (TensorRT's "Engine
Compatibility" page and the 11.4.1 support matrix). It carries a copy of the lean runtime unless it was built
with ``EXCLUDE_LEAN_RUNTIME`` (``lean_runtime_included``: false); the dispatch runtime needs that copy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gamma_rt.errors import EngineMismatch, GammaError

# (built major, running major) pairs where a version-compatible engine still loads, besides the same major.
CROSS_MAJOR = {(10, 11), (8, 10)}


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


def trt_version_tuple(version: str) -> tuple[int, ...]:
    """``"10.13.0.35"`` -> (10, 13, 0, 35); refuses what is not a TensorRT version."""
    try:
        return tuple(int(x) for x in version.split("."))
    except ValueError:
        raise GammaError(f"TensorRT version {version!r} is not of the form MAJOR.MINOR[.PATCH]") from None


def trt_major(version: str) -> int:
    return trt_version_tuple(version)[0]


def version_fits(built: str, running: str, version_compatible: bool = False) -> bool:
    """Whether an engine built by TensorRT ``built`` deserializes on TensorRT ``running``: the same version
    (major.minor.patch; the build number does not matter), or, for a version-compatible engine, a later
    version of the same major or of an allowed next major."""
    b, r = trt_version_tuple(built), trt_version_tuple(running)
    if b[:3] == r[:3]:
        return True
    return version_compatible and r > b and (b[0] == r[0] or (b[0], r[0]) in CROSS_MAJOR)


def mismatches(built_for: GpuIdentity, running: GpuIdentity, version_compatible: bool = False) -> list[str]:
    """Human-readable differences that make an engine unloadable here (empty when it fits)."""
    out = []
    if built_for.compute_capability != running.compute_capability:
        out.append(f"compute capability {built_for.compute_capability} vs this GPU's {running.compute_capability}")
    if not version_fits(built_for.trt_version, running.trt_version, version_compatible):
        kind = "version-compatible engines need a later release of a compatible major" if version_compatible else \
            "engines load on the TensorRT that built them unless built version-compatible"
        out.append(f"TensorRT {built_for.trt_version} vs installed {running.trt_version} ({kind})")
    if built_for.name != running.name:
        # Same architecture but another model (e.g. H100 PCIe vs SXM) still runs, but tactics were timed
        # on the other one; it is reported, and only blocks when the architecture differs too.
        out.append(f"built on {built_for.name!r}, running on {running.name!r}")
    return out


def recorded_precisions(record: dict) -> set[str]:
    return {c.get("precision") for c in record.get("components", {}).values()}


def find_engines(engines: dict, running: GpuIdentity, precision: str, manifest_path: str,
                 needs_lean_runtime: bool = False) -> dict:
    """The engine folder record that fits ``running`` and holds ``precision`` engines.

    ``needs_lean_runtime``: only TensorRT's dispatch runtime is installed, which runs version-compatible
    engines that carry the lean runtime. Raises EngineMismatch naming what differs when the bundle holds
    engines but none fit, and when it holds none at all (the caller falls back to ONNX Runtime or rebuilds)."""
    if not engines:
        raise EngineMismatch(f"{manifest_path}: no TensorRT engines recorded; run `gamma-rt export engines BUNDLE`")
    reasons = []
    for dir_name, record in engines.items():
        where = f"{manifest_path}: engines.{dir_name}"
        built_for = GpuIdentity.from_record(record, where)
        compatible = bool(record.get("version_compatible", False))
        blocking = [m for m in mismatches(built_for, running, compatible) if not m.startswith("built on")]
        if needs_lean_runtime and not (compatible and record.get("lean_runtime_included", False)):
            blocking.append("the dispatch runtime needs version-compatible engines that include the lean runtime")
        if blocking:
            reasons.append(f"{dir_name} ({'; '.join(blocking)})")
            continue
        if precision not in recorded_precisions(record):
            reasons.append(f"{dir_name} (no {precision} engines)")
            continue
        return {"dir": dir_name, **record}
    raise EngineMismatch(
        f"{manifest_path}: no engine fits {running.name} {running.sm} TensorRT {running.trt_version} "
        f"at {precision}: {', '.join(reasons)}; rebuild with `gamma-rt export engines BUNDLE --rebuild` "
        "or run with --backend ort"
    )


def fitting_precisions(engines: dict, running: GpuIdentity, needs_lean_runtime: bool = False) -> set[str]:
    """Every precision of which some engine folder fits ``running``."""
    out = set()
    for dir_name, record in engines.items():
        for precision in recorded_precisions(record):
            try:
                find_engines({dir_name: record}, running, precision, "", needs_lean_runtime)
            except EngineMismatch:
                continue
            out.add(precision)
    return out
