"""The TensorRT audio backend: the four engines of one precision, run with cuda-python device buffers.

- Engines are checked before loading: GPU, compute capability and TensorRT version against the manifest's
  engine record (runtime/engine_record.py), and the file's sha256; a mismatch raises EngineMismatch
  instead of failing inside TensorRT.
- The two experts run at the same time on two CUDA streams; fusion and projector follow on the first.
- Stages hand over in device memory: the experts write straight into fusion's input buffers.
- Every shape but the batch is fixed (30 s windows), so each batch size's whole chain is captured once into
  a CUDA graph and replayed: one launch instead of hundreds of kernel launches per window.

tensorrt and cuda-python are imported when a backend is opened, so this module imports on a CPU box.
Never imports torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gamma_rt.errors import BundleError, EngineMismatch, GammaError
from gamma_rt.hashing import sha256_file
from gamma_rt.manifest import AUDIO_COMPONENTS, MANIFEST_NAME, Manifest
from gamma_rt.runtime.engine_record import GpuIdentity, find_engines

# stream 0 runs the temporal expert, fusion and projector; stream 1 the global expert
STREAM_OF = {"temporal_encoder": 0, "global_encoder": 1, "fusion": 0, "projector": 0}
# which buffer each graph input reads: stages share device buffers instead of copying
SOURCE_OF = {("fusion", "temporal"): ("temporal_encoder", "hidden"), ("fusion", "global"): ("global_encoder", "hidden"),
             ("projector", "fused"): ("fusion", "fused"), ("global_encoder", "mel"): ("temporal_encoder", "mel")}


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def _ok(result):
    """Unpack a cuda-python ``(err, *values)`` tuple; a CUDA error here is a bug or a broken driver."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA call failed: {err}")
    return values[0] if len(values) == 1 else (values or None)


def fork_join(event, waiting_stream, signalling_stream) -> None:
    """Make ``waiting_stream`` wait for everything queued so far on ``signalling_stream`` (works in capture too)."""
    cudart = _cudart()
    _ok(cudart.cudaEventRecord(event, signalling_stream))
    _ok(cudart.cudaStreamWaitEvent(waiting_stream, event, 0))


def capture_graph(stream, enqueue) -> object:
    """What ``enqueue()`` queues on ``stream`` (and on streams joined to it by events), as an instantiated
    CUDA graph to replay with ``cudaGraphLaunch``."""
    cudart = _cudart()
    _ok(cudart.cudaStreamBeginCapture(stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
    enqueue()
    graph = _ok(cudart.cudaStreamEndCapture(stream))
    graph_exec = _ok(cudart.cudaGraphInstantiate(graph, 0))
    _ok(cudart.cudaGraphDestroy(graph))
    return graph_exec


def detect_gpu(device: int = 0) -> GpuIdentity:
    """This machine's GPU and TensorRT version, as recorded with each engine."""
    try:
        import tensorrt as trt

        cudart = _cudart()
    except ImportError as e:
        raise GammaError(f"the TensorRT backend needs the tensorrt and cuda-python packages ({e.name} is missing)") from None
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        raise GammaError("no CUDA GPU is visible (cudaGetDeviceCount)")
    props = _ok(cudart.cudaGetDeviceProperties(device))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return GpuIdentity(name.rstrip("\x00").strip(), f"{props.major}.{props.minor}", trt.__version__)


class TrtChain:
    """The audio side on TensorRT. ``encode(mel)``: (B, 128, 3000) float32 -> (B, 750, n_embd) float32.

    Also callable per component, ``chain(name, feed) -> output``, as the cosine report needs."""

    def __init__(self, bundle: str | Path, manifest: Manifest, precision: str = "fp16", cuda_graphs: bool = True):
        self.bundle, self.manifest, self.precision, self.use_graphs = Path(bundle), manifest, precision, cuda_graphs
        self.buffers: dict[tuple[str, str], int] = {}
        self.graphs: dict[int, object] = {}
        self.streams: list = []

    # --- lifetime --------------------------------------------------------------------------------

    def __enter__(self) -> "TrtChain":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        import tensorrt as trt

        cudart = _cudart()
        where = str(self.bundle / MANIFEST_NAME)
        self.identity = detect_gpu()
        record = find_engines(self.manifest.engines, self.identity, self.precision, where)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines, self.contexts, self.max_batch = {}, {}, 1 << 30
        for name in AUDIO_COMPONENTS:
            key = f"{name}.{self.precision}"
            r = record["components"].get(key)
            if r is None:
                raise EngineMismatch(f"{where}: engines.{record['dir']}.components lacks {key}; rebuild with --rebuild")
            path = self.bundle / r["file"]
            if not path.is_file() or sha256_file(path) != r["sha256"]:
                raise BundleError(f"{path}: missing or its sha256 differs from engines.{record['dir']}.components.{key}")
            engine = runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise EngineMismatch(f"{path}: TensorRT {trt.__version__} refused to load the engine; rebuild with --rebuild")
            self.engines[name] = engine
            self.contexts[name] = engine.create_execution_context()
            self.max_batch = min(self.max_batch, *(p[2][0] for p in r["profile"].values()))
        self.streams = [_ok(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking)) for _ in range(2)]
        self.fork = _ok(cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming))
        self.join = _ok(cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming))
        self.specs = {}
        for name in AUDIO_COMPONENTS:
            c = self.manifest.component(name)
            for spec in [*c.inputs, *c.outputs]:
                self.specs[(name, spec.name)] = tuple(spec.shape[1:])
                if (name, spec.name) not in SOURCE_OF:
                    nbytes = self.max_batch * int(np.prod(spec.shape[1:])) * 4
                    self.buffers[(name, spec.name)] = _ok(cudart.cudaMalloc(nbytes))
        for (name, tensor), src in SOURCE_OF.items():
            self.buffers[(name, tensor)] = self.buffers[src]

    def close(self) -> None:
        cudart = _cudart()
        for exec_graph in self.graphs.values():
            cudart.cudaGraphExecDestroy(exec_graph)
        for ptr in {v for k, v in self.buffers.items() if k not in SOURCE_OF}:
            cudart.cudaFree(ptr)
        for s in self.streams:
            cudart.cudaStreamDestroy(s)
        self.graphs, self.buffers, self.streams = {}, {}, []

    # --- running ---------------------------------------------------------------------------------

    def _bind(self, name: str, batch: int) -> None:
        ctx, engine = self.contexts[name], self.engines[name]
        import tensorrt as trt

        for i in range(engine.num_io_tensors):
            tensor = engine.get_tensor_name(i)
            if engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT:
                ctx.set_input_shape(tensor, (batch, *self.specs[(name, tensor)]))
            ctx.set_tensor_address(tensor, int(self.buffers[(name, tensor)]))

    def _enqueue(self, batch: int) -> None:
        """The whole chain on the two streams: fork, both experts, join, fusion, projector."""
        s0, s1 = self.streams
        fork_join(self.fork, s1, s0)
        for name in AUDIO_COMPONENTS:
            if name == "fusion":
                fork_join(self.join, s0, s1)
            self._bind(name, batch)
            if not self.contexts[name].execute_async_v3(int(self.streams[STREAM_OF[name]])):
                raise RuntimeError(f"TensorRT could not enqueue {name}")

    def _graph(self, batch: int):
        """A CUDA graph of the chain at ``batch``, captured after one plain run (TensorRT's lazy setup)."""
        cudart = _cudart()
        if batch not in self.graphs:
            self._enqueue(batch)
            _ok(cudart.cudaStreamSynchronize(self.streams[0]))
            self.graphs[batch] = capture_graph(self.streams[0], lambda: self._enqueue(batch))
        return self.graphs[batch]

    def encode(self, mel: np.ndarray) -> np.ndarray:
        """(B, 128, 3000) float32 log-mel -> (B, 750, n_embd) float32 embeddings, B <= the engines' max batch."""
        cudart = _cudart()
        batch = mel.shape[0]
        if mel.shape[1:] != self.specs[("temporal_encoder", "mel")]:
            raise GammaError(f"mel batch shape {mel.shape}: expected (B, {', '.join(map(str, self.specs[('temporal_encoder', 'mel')]))})")
        if batch > self.max_batch:
            raise GammaError(f"batch {batch} exceeds the engines' --max-batch {self.max_batch}; rebuild with a larger one")
        s0 = self.streams[0]
        mel = np.ascontiguousarray(mel, dtype=np.float32)
        _ok(cudart.cudaMemcpyAsync(self.buffers[("temporal_encoder", "mel")], mel.ctypes.data, mel.nbytes,
                                   cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, s0))
        if self.use_graphs:
            _ok(cudart.cudaGraphLaunch(self._graph(batch), s0))
        else:
            self._enqueue(batch)
        out = np.empty((batch, *self.specs[("projector", "embeddings")]), np.float32)
        _ok(cudart.cudaMemcpyAsync(out.ctypes.data, self.buffers[("projector", "embeddings")], out.nbytes,
                                   cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, s0))
        _ok(cudart.cudaStreamSynchronize(s0))
        return out

    def __call__(self, name: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        """One component on its own (synchronous, no graph): for the per-component cosine report."""
        cudart = _cudart()
        s = self.streams[STREAM_OF[name]]
        batch = next(iter(feed.values())).shape[0]
        for tensor, value in feed.items():
            v = np.ascontiguousarray(value, dtype=np.float32)
            _ok(cudart.cudaMemcpyAsync(self.buffers[(name, tensor)], v.ctypes.data, v.nbytes,
                                       cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, s))
        self._bind(name, batch)
        if not self.contexts[name].execute_async_v3(int(s)):
            raise RuntimeError(f"TensorRT could not enqueue {name}")
        out_name = self.manifest.component(name).outputs[0].name
        out = np.empty((batch, *self.specs[(name, out_name)]), np.float32)
        _ok(cudart.cudaMemcpyAsync(out.ctypes.data, self.buffers[(name, out_name)], out.nbytes,
                                   cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, s))
        _ok(cudart.cudaStreamSynchronize(s))
        return out
