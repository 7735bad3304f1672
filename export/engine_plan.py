"""What ``gamma-rt export engines`` builds: one TensorRT engine per ONNX audio component, decided from the
manifest alone (no TensorRT import), so that every decision here is tested on any machine.

Decided here: which ONNX graph feeds each engine, the optimization profile (min/opt/max batch of 30 s
windows; every other dimension is fixed by the manifest), the builder precision flags and what the GPU
must support for them, the engine folder and file names, the timing-cache path, and a cache key per
engine so that an unchanged engine is not rebuilt. export/engines.py makes the TensorRT calls.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gamma_rt.errors import BundleError, GammaError
from gamma_rt.hashing import sha256_file
from gamma_rt.manifest import AUDIO_COMPONENTS, MANIFEST_NAME, Manifest
from gamma_rt.runtime.engine_record import GpuIdentity

ENGINES_DIR = "engines"
TIMING_CACHE = "timing.cache"
# Builder flags per precision (names of tensorrt.BuilderFlag). fp16 stays on under int8/fp8 so that
# layers TensorRT cannot quantize fall back to fp16 rather than fp32.
PRECISION_FLAGS = {"fp16": ("FP16",), "bf16": ("BF16",), "int8": ("INT8", "FP16"), "fp8": ("FP8", "FP16")}
# Lowest compute capability with fast math of each kind (bf16: Ampere; fp8: Ada/Hopper; int8/fp16: Turing+).
MIN_COMPUTE_CAPABILITY = {"fp16": (7, 5), "bf16": (8, 0), "int8": (7, 5), "fp8": (8, 9)}
# int8 is calibrated implicitly (an entropy calibrator). TensorRT applies fp8 only where the graph carries
# explicit Q/DQ nodes (e.g. from NVIDIA ModelOpt); on a plain graph an fp8 build runs as fp16.
NEEDS_CALIBRATION = ("int8",)


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
    flags: tuple[str, ...]
    profiles: list[Profile]
    workspace_bytes: int
    engine_file: str  # bundle-relative
    cache_key: str = ""
    needs_calibration: bool = False
    skip_reason: str = ""  # non-empty: an up-to-date engine exists

    def record(self, sha256: str, nbytes: int) -> dict:
        return {
            "file": self.engine_file, "sha256": sha256, "bytes": nbytes, "source": self.source,
            "source_sha256": self.source_sha256, "precision": self.precision, "cache_key": self.cache_key,
            "profile": {p.input: [list(p.min), list(p.opt), list(p.max)] for p in self.profiles},
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
    if precision not in PRECISION_FLAGS:
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


def source_graph(manifest: Manifest, name: str, where: str):
    """The ONNX graph an engine of component ``name`` is built from: ``<name>.plain`` (standard operators,
    fp32), or ``<name>`` if it was not optimized for ONNX Runtime. TensorRT picks per-layer precision itself,
    so the source is always fp32."""
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
) -> EnginePlan:
    """Decide the engines to build for ``identity`` at ``precision``; up-to-date ones are marked skipped."""
    check_precision(precision, identity)
    if max_batch < 1:
        raise GammaError(f"--max-batch must be at least 1, got {max_batch}")
    if workspace_gb <= 0:
        raise GammaError(f"--workspace must be positive (GB), got {workspace_gb}")
    where = f"{Path(bundle) / MANIFEST_NAME}"
    engine_dir = f"{ENGINES_DIR}/{identity.engine_dir()}"
    plan = EnginePlan(identity, engine_dir, f"{engine_dir}/{TIMING_CACHE}")
    existing = manifest.engines.get(identity.engine_dir(), {}).get("components", {})
    for name in AUDIO_COMPONENTS:
        source_name, source = source_graph(manifest, name, where)
        key = f"{name}.{precision}"
        build = EngineBuild(
            component=key, source=source_name, onnx_file=source.file, source_sha256=source.sha256, precision=precision,
            flags=PRECISION_FLAGS[precision],
            profiles=[batch_profile(s, max_batch, opt_batch, f"{where}: components.{name}.inputs") for s in source.inputs],
            workspace_bytes=int(workspace_gb * (1 << 30)), engine_file=f"{engine_dir}/{key}.plan",
            needs_calibration=precision in NEEDS_CALIBRATION,
        )
        build.cache_key = cache_key(build, identity, calibration_sha256)
        old = existing.get(key)
        if not rebuild and old and old.get("cache_key") == build.cache_key and _intact(Path(bundle), old):
            build.skip_reason = "up to date"
        plan.builds.append(build)
    return plan


def _intact(bundle: Path, record: dict) -> bool:
    path = bundle / record["file"]
    return path.is_file() and path.stat().st_size == record.get("bytes") and sha256_file(path) == record.get("sha256")


def record_engines(manifest: Manifest, plan: EnginePlan, built: dict[str, tuple[str, int]]) -> None:
    """Write the plan's engines into ``manifest.engines`` (``built``: component -> (sha256, bytes))."""
    entry = manifest.engines.setdefault(plan.identity.engine_dir(), {})
    entry.update(gpu=plan.identity.name, compute_capability=plan.identity.compute_capability,
                 trt_version=plan.identity.trt_version, timing_cache=plan.timing_cache)
    components = entry.setdefault("components", {})
    for b in plan.builds:
        if b.component in built:
            components[b.component] = b.record(*built[b.component])
