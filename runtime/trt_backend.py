"""The TensorRT audio backend: the engines of the manifest's audio chain at one precision, run with
cuda-python device buffers. Any chain: where values go and which step runs on which stream come from
``audio.chain`` (gamma_rt/audio_chain.py), never from a family's names.

- Engines are checked before loading: GPU, compute capability and TensorRT version against the manifest's
  engine record (runtime/engine_record.py), and the file's sha256; a mismatch raises EngineMismatch
  instead of failing inside TensorRT.
- Steps of one wave (independent of each other, e.g. GaMMA's two experts) run at the same time, one CUDA
  stream each; the next wave starts on the first stream once all of them are done.
- Stages hand over in device memory: a step writes straight into the input buffers of the steps that read
  its value, and a chain input several steps read (the mel) is copied in once.
- Every shape but the batch is fixed (30 s windows), so the whole chain is captured into a CUDA graph
  (thread-local capture, at open) and replayed: one launch instead of hundreds of kernel launches per window.
  A new batch size recaptures; a failed capture falls back to plain enqueues.
- Full TensorRT, or only its lean or dispatch runtime (``tensorrt_lean`` / ``tensorrt_dispatch``) for
  version-compatible engines.

tensorrt and cuda-python are imported when a backend is opened, so this module imports on a CPU box.
Never imports torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gamma_rt.errors import BundleError, EngineMismatch, GammaError
from gamma_rt.hashing import sha256_file
from gamma_rt import audio_chain
from gamma_rt.manifest import MANIFEST_NAME, Manifest
from gamma_rt.runtime.engine_record import GpuIdentity, find_engines


def cuda_runtime():
    """cuda-python's CUDA runtime module: ``cuda.bindings.runtime`` (cuda-python >= 12.6), else the older
    ``cuda.cudart`` (12.0-12.5 have no ``cuda.bindings``)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    return cudart


# the TensorRT Python modules, best first: full TensorRT, the lean runtime, the dispatch runtime (which
# loads the lean runtime a version-compatible engine carries)
TRT_MODULES = ("tensorrt", "tensorrt_lean", "tensorrt_dispatch")


def import_trt_runtime():
    """(module, its name) of the first TensorRT runtime installed; GammaError when there is none."""
    import importlib

    for name in TRT_MODULES:
        try:
            return importlib.import_module(name), name
        except ImportError:
            continue
    raise GammaError("the TensorRT backend needs tensorrt (or tensorrt_lean / tensorrt_dispatch) and cuda-python "
                     "(pip install -e '.[gpu]')")


def _ok(result):
    """Unpack a cuda-python ``(err, *values)`` tuple; a CUDA error here is a bug or a broken driver."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA call failed: {err}")
    return values[0] if len(values) == 1 else (values or None)


def fork_join(event, waiting_stream, signalling_stream, cudart=None) -> None:
    """Make ``waiting_stream`` wait for everything queued so far on ``signalling_stream`` (works in capture too)."""
    cudart = cudart or cuda_runtime()
    _ok(cudart.cudaEventRecord(event, signalling_stream))
    _ok(cudart.cudaStreamWaitEvent(waiting_stream, event, 0))


def capture_graph(stream, enqueue, cudart=None) -> object:
    """What ``enqueue()`` queues on ``stream`` (and on streams joined to it by events), as an instantiated
    CUDA graph to replay with ``cudaGraphLaunch``.

    Thread-local capture: only this thread's unsafe CUDA calls are refused while capturing, so llama.cpp's
    CUDA work on the main thread goes on. The capture is always ended, also when ``enqueue`` fails, so the
    stream stays usable for plain enqueues."""
    cudart = cudart or cuda_runtime()
    _ok(cudart.cudaStreamBeginCapture(stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
    graph = None
    try:
        enqueue()
    finally:
        graph = _ok(cudart.cudaStreamEndCapture(stream))
    try:
        return _ok(cudart.cudaGraphInstantiate(graph, 0))
    finally:
        _ok(cudart.cudaGraphDestroy(graph))


def detect_gpu(device: int = 0) -> GpuIdentity:
    """This machine's GPU and TensorRT version, as recorded with each engine; GammaError when either is missing."""
    trt, _ = import_trt_runtime()
    try:
        cudart = cuda_runtime()
    except ImportError:
        raise GammaError("the TensorRT backend needs tensorrt and the cuda-python package "
                         "(pip install -e '.[gpu]')") from None
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        raise GammaError(f"no CUDA GPU is visible (cudaGetDeviceCount: {err})")
    err, props = cudart.cudaGetDeviceProperties(device)
    if int(err) != 0:
        raise GammaError(f"cannot read CUDA device {device}'s properties ({err})")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return GpuIdentity(name.rstrip("\x00").strip(), f"{props.major}.{props.minor}", trt.__version__)


def check_bound(ok: bool, what: str, component: str, tensor: str, value) -> None:
    """TensorRT's setters return False instead of raising (a shape outside the profile, a null address)."""
    if not ok:
        raise EngineMismatch(f"TensorRT refused {what} {value} for {component}.{tensor}; the engine does not fit "
                             "the manifest's graph: rebuild with --rebuild")


class TrtChain:
    """The audio side on TensorRT. ``encode(feeds)``: the chain inputs (``mel`` (B, n_mels, frames) float32,
    and ``mel_mask`` / ``window_index`` where the chain reads them) -> (B, tokens, n_embd) float32.

    Also callable per component, ``chain(name, feed) -> output``, as the cosine report needs.

    Each I/O tensor's buffer has the engine's own dtype for it (``get_tensor_dtype``); a stage's output and
    the next stage's input share one buffer, so their dtypes must agree. One execution context per engine,
    shaped for the batch of the last call; the CUDA graph is captured for that batch (at open for batch 1,
    again when the batch changes), since a graph replays the shapes it was captured with."""

    def __init__(self, bundle: str | Path, manifest: Manifest, precision: str = "fp16", cuda_graphs: bool = True):
        self.bundle, self.manifest, self.precision, self.use_graphs = Path(bundle), manifest, precision, cuda_graphs
        self.buffers: dict[tuple[str, str], int] = {}
        self.graph, self.graph_batch, self.bound_batch = None, 0, {}
        self.streams: list = []
        self.events: list = []
        self.graph_note = ""  # why CUDA graphs are off, when capture failed
        chain = manifest.audio.chain
        self.components = [step.component for step in chain]
        self.waves = audio_chain.waves(chain)
        self.stream_of = audio_chain.stream_of(chain)
        self.shared = audio_chain.shared_inputs(chain)  # (step, input) -> the buffer it reads
        self.fed_at = audio_chain.fed_at(chain)  # chain input value -> the buffer it is copied into
        self.output = audio_chain.embeddings_at(chain)

    # --- lifetime --------------------------------------------------------------------------------

    def __enter__(self) -> "TrtChain":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        self.trt, self.trt_module = import_trt_runtime()
        self.cudart = cudart = cuda_runtime()
        where = str(self.bundle / MANIFEST_NAME)
        self.identity = detect_gpu()
        record = find_engines(self.manifest.engines, self.identity, self.precision, where,
                              needs_lean_runtime=self.trt_module == "tensorrt_dispatch")
        runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        if record.get("lean_runtime_included"):
            runtime.engine_host_code_allowed = True  # the engine carries the lean runtime's code: our own build
        self.engines, self.contexts = {}, {}
        for name in self.components:
            self.engines[name] = self._load(runtime, record, name, where)
            self.contexts[name] = self.engines[name].create_execution_context()
            if self.contexts[name] is None:
                raise GammaError(f"TensorRT could not create an execution context for {name} (out of GPU memory?)")
        self.max_batch = min(self._profile_max(name) for name in self.components)
        n_streams = max(len(wave) for wave in self.waves)
        self.streams = [_ok(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking)) for _ in range(n_streams)]
        # one event per stream: stream i records it when handing over (fork: stream 0, join: the others)
        self.events = [_ok(cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming)) for _ in range(n_streams)]
        self._allocate()
        if self.use_graphs:
            self._capture(1)  # once at open, on the opening thread, for the streaming batch

    def _load(self, runtime, record: dict, name: str, where: str):
        key = f"{name}.{self.precision}"
        r = record["components"].get(key)
        if r is None:
            raise EngineMismatch(f"{where}: engines.{record['dir']}.components lacks {key}; rebuild with --rebuild")
        path = self.bundle / r["file"]
        if not path.is_file() or sha256_file(path) != r["sha256"]:
            raise BundleError(f"{path}: missing or its sha256 differs from engines.{record['dir']}.components.{key}")
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise EngineMismatch(f"{path}: {self.trt_module} {self.trt.__version__} refused to load the engine; "
                                 "rebuild with --rebuild")
        return engine

    def _io(self, name: str):
        """(tensor name, is input, numpy dtype) of every I/O tensor of ``name``'s engine."""
        engine = self.engines[name]
        for i in range(engine.num_io_tensors):
            tensor = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(tensor) == self.trt.TensorIOMode.INPUT
            yield tensor, is_input, np.dtype(self.trt.nptype(engine.get_tensor_dtype(tensor)))

    def _profile_max(self, name: str) -> int:
        engine = self.engines[name]
        return min(engine.get_tensor_profile_shape(t, 0)[2][0] for t, is_input, _ in self._io(name) if is_input)

    def _allocate(self) -> None:
        self.specs, self.dtypes = {}, {}
        for name in self.components:
            c = self.manifest.component(name)
            shapes = {spec.name: tuple(spec.shape[1:]) for spec in [*c.inputs, *c.outputs]}
            for tensor, _, dtype in self._io(name):
                if tensor not in shapes:
                    raise EngineMismatch(f"{name} engine tensor {tensor!r} is not in the manifest's graph; rebuild")
                self.specs[(name, tensor)], self.dtypes[(name, tensor)] = shapes[tensor], dtype
        for key, src in self.shared.items():
            if self.dtypes[key] != self.dtypes[src]:
                raise EngineMismatch(f"{key[0]}.{key[1]} is {self.dtypes[key]} but {src[0]}.{src[1]} is "
                                     f"{self.dtypes[src]}: the engines cannot share that buffer; rebuild them together")
        for key, shape in self.specs.items():
            if key not in self.shared:
                nbytes = self.max_batch * int(np.prod(shape)) * self.dtypes[key].itemsize
                self.buffers[key] = _ok(self.cudart.cudaMalloc(nbytes))
        for key, src in self.shared.items():
            self.buffers[key] = self.buffers[src]

    def close(self) -> None:
        cudart = getattr(self, "cudart", None)
        if cudart is None:
            return
        if self.graph is not None:
            cudart.cudaGraphExecDestroy(self.graph)
        for ptr in {v for k, v in self.buffers.items() if k not in self.shared}:
            cudart.cudaFree(ptr)
        for e in self.events:
            cudart.cudaEventDestroy(e)
        for s in self.streams:
            cudart.cudaStreamDestroy(s)
        self.graph, self.buffers, self.streams, self.events = None, {}, [], []
        self.contexts, self.engines = {}, {}

    # --- running ---------------------------------------------------------------------------------

    def _check_batch(self, batch: int) -> None:
        if not 1 <= batch <= self.max_batch:
            raise GammaError(f"batch {batch} is outside the engines' profile (1 to {self.max_batch}); "
                             "rebuild with a larger --max-batch")

    def _bind(self, name: str, batch: int) -> None:
        """Shape the context for ``batch`` and point it at the buffers (once per batch change)."""
        if self.bound_batch.get(name) == batch:
            return
        ctx = self.contexts[name]
        for tensor, is_input, _ in self._io(name):
            if is_input:
                shape = (batch, *self.specs[(name, tensor)])
                check_bound(ctx.set_input_shape(tensor, shape), "shape", name, tensor, shape)
            address = int(self.buffers[(name, tensor)])
            check_bound(ctx.set_tensor_address(tensor, address), "address", name, tensor, hex(address))
        self.bound_batch[name] = batch

    def _enqueue(self, batch: int) -> None:
        """The whole chain, wave by wave: the steps of a wave on streams 0, 1, ... (forked from stream 0,
        which holds the inputs), joined back into stream 0 before the next wave."""
        for wave in self.waves:
            for i in range(1, len(wave)):  # fork: stream i waits for stream 0's work so far
                fork_join(self.events[0], self.streams[i], self.streams[0], self.cudart)
            for name in wave:
                self._bind(name, batch)
                if not self.contexts[name].execute_async_v3(int(self.streams[self.stream_of[name]])):
                    raise RuntimeError(f"TensorRT could not enqueue {name}")
            for i in range(1, len(wave)):  # join: stream 0 waits for stream i
                fork_join(self.events[i], self.streams[0], self.streams[i], self.cudart)

    def _capture(self, batch: int) -> None:
        """(Re)capture the chain at ``batch`` after one plain run (TensorRT's lazy setup); on failure CUDA
        graphs are turned off and the chain runs by plain enqueues."""
        if self.graph is not None:
            _ok(self.cudart.cudaGraphExecDestroy(self.graph))
            self.graph = None
        self._enqueue(batch)
        _ok(self.cudart.cudaStreamSynchronize(self.streams[0]))
        try:
            self.graph = capture_graph(self.streams[0], lambda: self._enqueue(batch), self.cudart)
            self.graph_batch = batch
        except RuntimeError as e:
            self.use_graphs, self.graph_note = False, f"CUDA graph capture failed ({e}); plain enqueue"
            _ok(self.cudart.cudaStreamSynchronize(self.streams[0]))

    def _copy_in(self, key: tuple[str, str], value: np.ndarray, stream) -> None:
        v = np.ascontiguousarray(value, dtype=self.dtypes[key])
        _ok(self.cudart.cudaMemcpyAsync(self.buffers[key], v.ctypes.data, v.nbytes,
                                        self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))
        return v  # kept alive until the stream is synchronized

    def _copy_out(self, key: tuple[str, str], batch: int, stream) -> np.ndarray:
        out = np.empty((batch, *self.specs[key]), self.dtypes[key])
        _ok(self.cudart.cudaMemcpyAsync(out.ctypes.data, self.buffers[key], out.nbytes,
                                        self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))
        _ok(self.cudart.cudaStreamSynchronize(stream))
        return out.astype(np.float32, copy=False)

    def encode(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The chain inputs it reads (each (B, ...) as the first reading graph's input) -> (B, tokens, n_embd)
        float32 embeddings, B <= the engines' max batch."""
        missing = [v for v in self.fed_at if v not in feeds]
        if missing:
            raise GammaError(f"the audio chain reads {', '.join(missing)}, which the feeds lack")
        batch = feeds[next(iter(self.fed_at))].shape[0]
        for value, key in self.fed_at.items():
            shape = np.shape(feeds[value])
            if tuple(shape[1:]) != self.specs[key] or shape[0] != batch:
                raise GammaError(f"{value} of shape {shape}: the bundle's {key[0]} takes "
                                 f"(batch {batch}, {', '.join(map(str, self.specs[key]))})")
        self._check_batch(batch)  # before any copy into the max-batch buffers
        s0 = self.streams[0]
        keep = [self._copy_in(key, feeds[value], s0) for value, key in self.fed_at.items()]
        if self.use_graphs and self.graph_batch != batch:
            self._capture(batch)
        if self.use_graphs:
            _ok(self.cudart.cudaGraphLaunch(self.graph, s0))
        else:
            self._enqueue(batch)
        out = self._copy_out(self.output, batch, s0)
        del keep
        return out

    def __call__(self, name: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        """One component on its own (synchronous, no graph): for the per-component cosine report."""
        s = self.streams[self.stream_of[name]]
        batch = next(iter(feed.values())).shape[0]
        self._check_batch(batch)
        keep = [self._copy_in((name, tensor), value, s) for tensor, value in feed.items()]
        self._bind(name, batch)
        if self.graph_batch:  # the contexts may now hold other shapes than the captured graph
            self.graph_batch = 0
        if not self.contexts[name].execute_async_v3(int(s)):
            raise RuntimeError(f"TensorRT could not enqueue {name}")
        out = self._copy_out((name, self.manifest.component(name).outputs[0].name), batch, s)
        del keep
        return out
