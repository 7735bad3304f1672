"""What ``gamma-rt export engines`` builds: one TensorRT engine per ONNX audio component, decided from the
manifest alone (no TensorRT import), so that every decision here is tested on any machine.

Decided here: which ONNX graph feeds each engine, the optimization profile (min/opt/max batch of 30 s
windows; every other dimension is fixed by the manifest), how the precision is asked for on this TensorRT
major, what the GPU must support for it, the engine folder and file names, the timing-cache and
calibration-cache paths, and a cache key per engine so that an unchanged engine is not rebuilt.
export/engines.py makes the TensorRT calls.

TensorRT 10 and 11 ask for a precision differently, so the major version is decided first, from the
installed TensorRT, before anything is parsed:

- 10.x (10.3 is JetPack 6's): a weakly typed network from the fp32 plain graph, with the precision as builder
  flags (``FP16``, ``BF16``, ``INT8`` + an entropy calibrator, ``FP8`` on Q/DQ nodes).
- 11.x: no precision flags, no weak typing, no INT8 calibrators. A ``STRONGLY_TYPED`` network built from a
  graph that already holds the precision: ``<name>.plain.fp16`` / ``.bf16`` (the plain graph cast to
  fp16/bf16 inside, fp32 at its inputs and outputs; export/engine_sources.py), or an explicitly quantized
  Q/DQ graph ``<name>.plain.int8`` / ``.fp8`` (e.g. from NVIDIA ModelOpt) for int8 and fp8.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gamma_rt.errors import BundleError, GammaError
from gamma_rt.hashing import sha256_file
from gamma_rt.manifest import MANIFEST_NAME, Manifest
from gamma_rt.runtime.engine_record import GpuIdentity, trt_major, trt_version_tuple

ENGINES_DIR = "engines"
TIMING_CACHE = "timing.cache"
# TensorRT releases this code is written and API-checked against (tests/trt_api/): 10.3 (JetPack 6) up to
# the newest 11.x. Older ones lack APIs used here; a 12.x may remove more, so it is refused until checked.
OLDEST_TRT = (10, 3)
SUPPORTED_MAJORS = (10, 11)
PRECISIONS = ("fp16", "bf16", "int8", "fp8")
# TensorRT 10 builder flags per precision (names of tensorrt.BuilderFlag). fp16 stays on under int8/fp8 so
# that layers TensorRT cannot quantize fall back to fp16 rather than fp32.
PRECISION_FLAGS = {"fp16": ("FP16",), "bf16": ("BF16",), "int8": ("INT8", "FP16"), "fp8": ("FP8", "FP16")}
# Lowest compute capability with fast math of each kind (bf16: Ampere; fp8: Ada/Hopper; int8/fp16: Turing+).
MIN_COMPUTE_CAPABILITY = {"fp16": (7, 5), "bf16": (8, 0), "int8": (7, 5), "fp8": (8, 9)}
# TensorRT 11 graphs per precision: the cast ones export/engine_sources.py writes, and the Q/DQ ones it
# does not (they come from a quantization tool).
CAST_PRECISIONS = ("fp16", "bf16")
VERSION_COMPATIBLE_FLAGS = ("VERSION_COMPATIBLE",)
EXCLUDE_LEAN_FLAGS = ("EXCLUDE_LEAN_RUNTIME",)


@dataclass(frozen=True)
class BuildMode:
    """How one precision is built on one TensorRT major.

    flags: tensorrt.BuilderFlag names; network_flags: tensorrt.NetworkDefinitionCreationFlag names;
    source_suffix: "" for ``<name>.plain`` (fp32), else the precision of the graph (``<name>.plain.fp16``);
    calibrate: an INT8 calibrator runs during the build (TensorRT 10 only)."""

    flags: tuple[str, ...]
    network_flags: tuple[str, ...]
    source_suffix: str
    calibrate: bool


def check_trt_version(version: str) -> int:
    """The major of a TensorRT this code supports; anything else is refused in one line."""
    v = trt_version_tuple(version)
    if v[:2] < OLDEST_TRT or v[0] not in SUPPORTED_MAJORS:
        raise GammaError(f"TensorRT {version} is not supported: use 10.3 (JetPack 6) to "
                         f"{SUPPORTED_MAJORS[-1]}.x (pip install -e '.[gpu]')")
    return v[0]


def build_mode(precision: str, trt_version: str) -> BuildMode:
    """The builder and network flags and the source graph for ``precision`` on TensorRT ``trt_version``."""
    if check_trt_version(trt_version) == 10:
        return BuildMode(PRECISION_FLAGS[precision], (), "", precision == "int8")
    return BuildMode((), ("STRONGLY_TYPED",), precision, False)


@dataclass(frozen=True)
class Profile:
    """One optimization profile for an input: shapes at min, opt and max batch."""

    input: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass
class EngineBuild:
    """Everything TensorRT needs to build one engine, and where the result goes."""

    component: str  # manifest key of the engine: "temporal_encoder.fp16"
    source: str  # manifest key of the ONNX graph it is built from: "temporal_encoder"
    onnx_file: str  # bundle-relative
    source_sha256: str
    precision: str
    flags: tuple[str, ...]  # tensorrt.BuilderFlag names
    profiles: list[Profile]
    workspace_bytes: int
    engine_file: str  # bundle-relative
    trt_major: int = 10  # decided before anything is parsed: it picks the network flags and the source graph
    network_flags: tuple[str, ...] = ()  # tensorrt.NetworkDefinitionCreationFlag names
    cache_key: str = ""
    needs_calibration: bool = False
    calibration_cache: str = ""  # bundle-relative, named by the calibration data's hash
    skip_reason: str = ""  # non-empty: an up-to-date engine exists

    @property
    def version_compatible(self) -> bool:
        return "VERSION_COMPATIBLE" in self.flags

    @property
    def lean_runtime_included(self) -> bool:
        return self.version_compatible and "EXCLUDE_LEAN_RUNTIME" not in self.flags

    def record(self, sha256: str, nbytes: int) -> dict:
        return {
            "file": self.engine_file, "sha256": sha256, "bytes": nbytes, "source": self.source,
            "source_sha256": self.source_sha256, "precision": self.precision, "cache_key": self.cache_key,
            "profile": {p.input: [list(p.min), list(p.opt), list(p.max)] for p in self.profiles},
            "strongly_typed": "STRONGLY_TYPED" in self.network_flags, "version_compatible": self.version_compatible,
            "lean_runtime_included": self.lean_runtime_included,
        }


@dataclass
class EnginePlan:
    identity: GpuIdentity
    engine_dir: str  # bundle-relative: engines/<gpu>-sm<cc>-trt<ver>
    timing_cache: str  # bundle-relative
    builds: list[EngineBuild] = field(default_factory=list)

    def to_build(self) -> list[EngineBuild]:
        return [b for b in self.builds if not b.skip_reason]


def check_precision(precision: str, identity: GpuIdentity) -> None:
    if precision not in PRECISIONS:
        raise GammaError(f"--precision {precision!r}: choose one of {', '.join(PRECISION_FLAGS)}")
    need = MIN_COMPUTE_CAPABILITY[precision]
    have = tuple(int(x) for x in identity.compute_capability.split("."))
    if have < need:
        raise GammaError(
            f"--precision {precision} needs compute capability {need[0]}.{need[1]} or newer; "
            f"{identity.name} is {identity.compute_capability} (use fp16{' or int8' if have >= (7, 5) else ''})"
        )


def batch_profile(spec, max_batch: int, opt_batch: int, where: str) -> Profile:
    """Profile of one graph input: the leading symbolic dim is the batch, all others must be fixed."""
    shape = list(spec.shape)
    if not shape or isinstance(shape[0], int):
        raise BundleError(f"{where}: input {spec.name!r} shape {shape} has no symbolic batch dimension")
    fixed = shape[1:]
    if not all(isinstance(d, int) for d in fixed):
        raise BundleError(
            f"{where}: input {spec.name!r} shape {shape}: only the batch may be symbolic for an engine "
            "(30 s windows have a fixed frame count)"
        )
    opt = max(1, min(opt_batch, max_batch))
    return Profile(spec.name, (1, *fixed), (opt, *fixed), (max_batch, *fixed))


def source_graph(manifest: Manifest, name: str, where: str, suffix: str = ""):
    """The ONNX graph an engine of component ``name`` is built from.

    ``suffix`` "" (TensorRT 10: the builder picks per-layer precision from flags): ``<name>.plain``
    (standard operators, fp32), or ``<name>`` if it was not optimized for ONNX Runtime. ``suffix`` a precision
    (TensorRT 11, strongly typed): ``<name>.plain.<suffix>``, which must exist."""
    if suffix:
        key = f"{name}.plain.{suffix}"
        graph = manifest.components.get(key)
        if graph is None:
            how = (f"add it with `gamma-rt export engines BUNDLE --checkpoint CKPT --precision {suffix}`"
                   if suffix in CAST_PRECISIONS else
                   "TensorRT 11 has no INT8 calibrators: add an explicitly quantized (Q/DQ) graph, e.g. from "
                   "NVIDIA ModelOpt, under that key, or build with TensorRT 10")
            raise BundleError(f"{where}: components.{key} missing: TensorRT 11 builds strongly typed engines from "
                              f"a {suffix} graph; {how}")
        return key, graph
    plain = manifest.components.get(f"{name}.plain")
    if plain is not None:
        return f"{name}.plain", plain
    source = manifest.components.get(name)
    if source is None or source.kind != "onnx":
        raise BundleError(f"{where}: components.{name} (fp32 ONNX) missing; run `gamma-rt export onnx` first")
    if source.extra.get("ort_optimized"):
        ops = ", ".join(sorted(source.extra.get("fusions", {}))) or "contrib operators"
        raise BundleError(
            f"{where}: components.{name} is optimized for ONNX Runtime ({ops}), which TensorRT cannot parse; "
            "add plain graphs with `gamma-rt export engines BUNDLE --checkpoint CKPT`"
        )
    return name, source


def cache_key(build: EngineBuild, identity: GpuIdentity, calibration_sha256: str = "") -> str:
    """Changes whenever the engine would come out different: graph, precision, shapes, budget, GPU, TRT."""
    payload = {
        "source_sha256": build.source_sha256, "precision": build.precision, "flags": build.flags,
        "network_flags": build.network_flags,
        "profiles": [asdict(p) for p in build.profiles], "workspace": build.workspace_bytes,
        "identity": asdict(identity), "calibration": calibration_sha256,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def plan_engines(
    bundle: str | Path,
    manifest: Manifest,
    identity: GpuIdentity,
    precision: str = "fp16",
    max_batch: int = 4,
    opt_batch: int = 1,
    workspace_gb: float = 4.0,
    rebuild: bool = False,
    calibration_sha256: str = "",
    version_compatible: bool = False,
    exclude_lean_runtime: bool = False,
) -> EnginePlan:
    """Decide the engines to build for ``identity`` (its TensorRT version decides how) at ``precision``;
    up-to-date ones are marked skipped. ``version_compatible``: engines later TensorRT releases load too
    (``exclude_lean_runtime``: without their copy of the lean runtime, smaller, not for the dispatch runtime)."""
    check_precision(precision, identity)
    mode = build_mode(precision, identity.trt_version)
    if max_batch < 1:
        raise GammaError(f"--max-batch must be at least 1, got {max_batch}")
    if workspace_gb <= 0:
        raise GammaError(f"--workspace must be positive (GB), got {workspace_gb}")
    if exclude_lean_runtime and not version_compatible:
        raise GammaError("--exclude-lean-runtime only applies with --version-compatible")
    if mode.calibrate and not calibration_sha256:
        raise GammaError(f"--precision {precision} on TensorRT {identity.trt_version} calibrates: it needs "
                         "calibration audio (BUNDLE/demo/ or --calibration-audio)")
    flags = mode.flags + (VERSION_COMPATIBLE_FLAGS if version_compatible else ()) + \
        (EXCLUDE_LEAN_FLAGS if exclude_lean_runtime else ())
    where = f"{Path(bundle) / MANIFEST_NAME}"
    engine_dir = f"{ENGINES_DIR}/{identity.engine_dir()}"
    plan = EnginePlan(identity, engine_dir, f"{engine_dir}/{TIMING_CACHE}")
    existing = manifest.engines.get(identity.engine_dir(), {}).get("components", {})
    for name in manifest.audio.components:
        source_name, source = source_graph(manifest, name, where, mode.source_suffix)
        key = f"{name}.{precision}"
        build = EngineBuild(
            component=key, source=source_name, onnx_file=source.file, source_sha256=source.sha256, precision=precision,
            flags=flags,
            profiles=[batch_profile(s, max_batch, opt_batch, f"{where}: components.{name}.inputs") for s in source.inputs],
            workspace_bytes=int(workspace_gb * (1 << 30)), engine_file=f"{engine_dir}/{key}.plan",
            trt_major=trt_major(identity.trt_version), network_flags=mode.network_flags,
            needs_calibration=mode.calibrate,
            # named by the data: new calibration music never reuses an old table
            calibration_cache=f"{engine_dir}/{key}.{calibration_sha256[:16]}.calib" if mode.calibrate else "",
        )
        build.cache_key = cache_key(build, identity, calibration_sha256 if mode.calibrate else "")
        old = existing.get(key)
        if not rebuild and old and old.get("cache_key") == build.cache_key and _intact(Path(bundle), old):
            build.skip_reason = "up to date"
        plan.builds.append(build)
    return plan


def _intact(bundle: Path, record: dict) -> bool:
    path = bundle / record["file"]
    return path.is_file() and path.stat().st_size == record.get("bytes") and sha256_file(path) == record.get("sha256")


def record_engines(manifest: Manifest, plan: EnginePlan, built: dict[str, tuple[str, int]]) -> None:
    """Write the plan's engines into ``manifest.engines`` (``built``: component -> (sha256, bytes)). The folder is
    version-compatible (and includes the lean runtime) only when every engine in it is."""
    entry = manifest.engines.setdefault(plan.identity.engine_dir(), {})
    entry.update(gpu=plan.identity.name, compute_capability=plan.identity.compute_capability,
                 trt_version=plan.identity.trt_version, timing_cache=plan.timing_cache)
    components = entry.setdefault("components", {})
    for b in plan.builds:
        if b.component in built:
            components[b.component] = b.record(*built[b.component])
    records = list(components.values())
    entry["version_compatible"] = bool(records) and all(r.get("version_compatible") for r in records)
    entry["lean_runtime_included"] = bool(records) and all(r.get("lean_runtime_included") for r in records)
