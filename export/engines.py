"""``gamma-rt export engines`` (alias ``build-engines``): build the TensorRT engines that export/engine_plan.py
decides on.

Only this file calls TensorRT's builder (the documented Python API: Builder, OnnxParser, BuilderConfig,
optimization profiles, a persistent timing cache). tensorrt is imported inside the functions, so the
command's ``--help`` and the planning tests work on machines without it. Every name used here exists in
TensorRT 10.3, 10.13 and 11.1 where the code path runs (tests/test_trt_api.py checks it against
tests/trt_api/); the plan (export/engine_plan.py) already decided, from the installed major, which flags
and which source graph to use.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gamma_rt.errors import BundleError, GammaError
from gamma_rt.hashing import sha256_file, sha256_files
from gamma_rt.manifest import Manifest
from gamma_rt.progress import track

from .engine_plan import EngineBuild, EnginePlan, plan_engines, record_engines

HELP = """\
Compile the bundle's ONNX audio graphs (every step of its manifest's audio chain, any family) into
TensorRT engines for the GPU in this machine. Engines go to BUNDLE/engines/<gpu>-sm<cc>-trt<version>/ and are recorded in the
manifest with hashes; the runtime refuses engines built for another GPU or TensorRT version and falls
back to ONNX Runtime. Unchanged engines are kept; --rebuild forces a fresh build.

Engines are built from plain ONNX graphs (standard operators; the ONNX Runtime-optimized graphs use
contrib operators TensorRT cannot parse): pass --checkpoint CKPT once to add them to the bundle.

TensorRT 10 (10.3 on JetPack 6): the precision is a builder flag on the fp32 plain graphs; int8 calibrates
on log-mel windows of the music in BUNDLE/demo/ plus --calibration-audio DIR (the calibration table is
named by that music's hash); fp8 only applies where the graph carries Q/DQ nodes, otherwise it runs as fp16.
TensorRT 11 builds strongly typed engines: fp16/bf16 from the plain graphs cast to that precision (made
with --checkpoint), int8/fp8 only from an explicitly quantized Q/DQ graph. Every build prints the embedding
cosine against fp32 per component.

--version-compatible engines also load on later TensorRT releases of the same major (and 10.x engines on
11.x), and on the lean or dispatch runtime (tensorrt_lean / tensorrt_dispatch) instead of full TensorRT.

Needs the tensorrt and cuda-python packages and an NVIDIA GPU (on Jetson: JetPack 6, see docs/jetson.md).

Examples:
  gamma-rt {command} bundle --checkpoint ckpt --precision fp16
  gamma-rt {command} bundle --precision int8 --calibration-audio ~/Music/calibration
"""


def register_export_format(export_sub: argparse._SubParsersAction) -> None:
    """``gamma-rt export engines``, beside ``export onnx`` and ``export gguf`` (export/commands.py calls this)."""
    _add_parser(export_sub, "engines", "export engines")


def register(sub: argparse._SubParsersAction) -> None:
    """``gamma-rt build-engines``: the same command at the top level, as the README and older scripts name it."""
    _add_parser(sub, "build-engines", "build-engines")


def _add_parser(sub: argparse._SubParsersAction, name: str, command: str) -> None:
    p = sub.add_parser(name, help="compile the audio graphs into TensorRT engines for this GPU",
                       description=HELP.format(command=command), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle folder with fp32 ONNX audio graphs (gamma-rt export onnx)")
    p.add_argument("--precision", default="fp16", choices=["fp16", "bf16", "fp8", "int8"],
                   help="math precision TensorRT may use (default fp16; bf16 needs sm80+, fp8 sm89+)")
    p.add_argument("--max-batch", type=int, default=4, help="most 30 s windows per call (profile max, default 4)")
    p.add_argument("--opt-batch", type=int, default=1, help="batch TensorRT tunes for (default 1)")
    p.add_argument("--workspace", type=float, default=4.0, help="builder scratch memory in GB (default 4)")
    p.add_argument("--calibration-audio", help="folder of extra music for int8/fp8 calibration")
    p.add_argument("--checkpoint", help="checkpoint folder: first trace plain ONNX graphs for TensorRT into the "
                   "bundle (needs torch; do it once, on any machine)")
    p.add_argument("--rebuild", action="store_true", help="rebuild even if an up-to-date engine exists")
    p.add_argument("--version-compatible", action="store_true",
                   help="engines that later TensorRT releases and the lean/dispatch runtimes load too (may be slower)")
    p.add_argument("--exclude-lean-runtime", action="store_true",
                   help="with --version-compatible: leave the lean runtime out of each engine (smaller; not for "
                   "the dispatch runtime)")
    p.set_defaults(func=_cmd_build_engines)


def _cmd_build_engines(args) -> int:
    from gamma_rt.runtime.trt_backend import detect_gpu

    from .engine_plan import CAST_PRECISIONS, build_mode

    bundle = Path(args.bundle)
    if args.checkpoint:
        from .engine_sources import export_plain_graphs

        # the cast copy is what TensorRT 11 builds from; traced here too, as this machine may have no TensorRT
        casts = (args.precision,) if args.precision in CAST_PRECISIONS else ()
        export_plain_graphs(args.checkpoint, bundle, progress=track, precisions=("fp32", *casts))
    manifest = Manifest.load(bundle)
    identity = detect_gpu()
    mode = build_mode(args.precision, identity.trt_version)  # the major decides everything below
    calibration_sha, feeds, mel_batches = "", None, []
    if mode.calibrate or args.calibration_audio:
        from .calibration import calibration_batches, calibration_files, calibration_sha256
        from .cosine_report import OrtChain, component_feeds

        files = calibration_files(bundle, args.calibration_audio)
        mel_batches = list(calibration_batches(files, batch=args.opt_batch, audio=manifest.audio))
        calibration_sha = calibration_sha256(mel_batches)
        if mode.calibrate:
            reference = OrtChain(bundle, manifest)  # one set of sessions for every batch
            per_batch = [component_feeds(reference, mel) for mel in mel_batches]
            feeds = {name: [pb[name] for pb in per_batch] for name in manifest.audio.components}
    plan = plan_engines(bundle, manifest, identity, args.precision, args.max_batch, args.opt_batch,
                        args.workspace, args.rebuild, calibration_sha, args.version_compatible,
                        args.exclude_lean_runtime)
    print(f"engines for {identity.name} ({identity.sm}, TensorRT {identity.trt_version}) in {bundle / plan.engine_dir}")
    built = build_all(bundle, plan, feeds)
    record_engines(manifest, plan, built)
    manifest.write(bundle)
    if mel_batches:
        from gamma_rt.runtime.trt_backend import TrtChain

        from .cosine_report import OrtChain, cosine_report, format_report

        with TrtChain(bundle, manifest, args.precision) as engines:
            print(format_report(cosine_report(OrtChain(bundle, manifest), engines, mel_batches), f"TensorRT {args.precision}"))
    for b in plan.builds:
        print(f"  {b.component}: {b.skip_reason or 'built'}")
    return 0


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise GammaError("building engines needs the full tensorrt package (pip install -e '.[gpu]'; "
                         "on Jetson it comes with JetPack)") from None
    return trt


def build_all(bundle: Path, plan: EnginePlan, calibration_feeds: dict | None = None, trt=None) -> dict[str, tuple[str, int]]:
    """Build every engine in ``plan`` that is not up to date, sharing one timing cache. Returns
    component -> (sha256, bytes) of the engines written. ``trt``: the tensorrt module (a stand-in in tests)."""
    trt = trt or import_tensorrt()
    (bundle / plan.engine_dir).mkdir(parents=True, exist_ok=True)
    logger = trt.Logger(trt.Logger.WARNING)
    cache_path = bundle / plan.timing_cache
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    built = {}
    for build in track(plan.to_build(), description="building engines"):
        feeds = (calibration_feeds or {}).get(build.component.rsplit(".", 1)[0])
        engine, new_cache = build_engine(trt, logger, bundle, build, cache_bytes, feeds)
        path = bundle / build.engine_file
        path.write_bytes(engine)  # first: a timing cache that fails to save must not lose the engine
        built[build.component] = (sha256_file(path), path.stat().st_size)
        if new_cache:
            # saved after every engine: a later failure keeps the tactics already timed
            cache_bytes = new_cache
            cache_path.write_bytes(cache_bytes)
    return built


def installed_major(trt) -> int:
    return int(trt.__version__.split(".")[0])


def network_flags(trt, names: tuple[str, ...]) -> int:
    """The ``create_network`` bit mask of NetworkDefinitionCreationFlag names (0: TensorRT 10's default,
    explicit batch, weakly typed)."""
    mask = 0
    for name in names:
        flag = getattr(trt.NetworkDefinitionCreationFlag, name, None)
        if flag is None:
            raise GammaError(f"TensorRT {trt.__version__} has no {name} network flag")
        mask |= 1 << int(flag)
    return mask


def _timing_cache(config, cache_bytes: bytes, where: str):
    """Attach the saved timing cache; TensorRT refuses one from another device or version, and then the
    build goes on with an empty cache instead of failing."""
    cache = config.create_timing_cache(cache_bytes)
    if config.set_timing_cache(cache, False):  # False: do not accept a cache from another device/version
        return
    print(f"gamma-rt: {where}: timing cache refused (another GPU or TensorRT); timing from scratch", file=sys.stderr)
    if not config.set_timing_cache(config.create_timing_cache(b""), False):
        raise GammaError(f"{where}: TensorRT refused an empty timing cache")


def build_engine(trt, logger, bundle: Path, build: EngineBuild, cache_bytes: bytes, calibration_feeds=None):
    """One engine from one ONNX graph. Returns (serialized engine, updated timing cache or b"" when TensorRT
    gives none back)."""
    major = installed_major(trt)
    if major != build.trt_major:  # before parsing: the plan's flags and source graph are per major
        raise GammaError(f"{build.component}: planned for TensorRT {build.trt_major}.x, but {trt.__version__} is "
                         "installed; plan again on this machine")
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, build.network_flags))
    parser = trt.OnnxParser(network, logger)
    onnx_path = bundle / build.onnx_file
    # parse_from_file resolves external data (the experts' weights) next to the graph
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"{onnx_path}: TensorRT cannot parse the graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, build.workspace_bytes)
    for flag in build.flags:
        if not hasattr(trt.BuilderFlag, flag):
            raise GammaError(f"TensorRT {trt.__version__} has no {flag} builder flag")
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    for p in build.profiles:
        profile.set_shape(p.input, p.min, p.opt, p.max)
    config.add_optimization_profile(profile)
    _timing_cache(config, cache_bytes, build.component)
    if build.needs_calibration:
        if major != 10:
            raise GammaError(f"{build.component}: TensorRT {trt.__version__} has no INT8 calibrators; "
                             "build int8 from an explicitly quantized (Q/DQ) graph")
        _attach_calibrator(trt, config, profile, bundle, build, calibration_feeds)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise GammaError(f"{build.component}: TensorRT could not build the engine (see the log above)")
    timing = config.get_timing_cache()
    return bytes(engine), bytes(timing.serialize()) if timing is not None else b""


def _attach_calibrator(trt, config, profile, bundle: Path, build: EngineBuild, calibration_feeds) -> None:
    """TensorRT 10 only (tests/test_trt_api.py checks it against 10.x): the INT8 entropy calibrator."""
    if not calibration_feeds:
        raise GammaError(f"{build.component}: {build.precision} needs calibration audio")
    from .calibration import make_calibrator

    config.int8_calibrator = make_calibrator(trt, build, calibration_feeds, bundle / build.calibration_cache)
    config.set_calibration_profile(profile)
