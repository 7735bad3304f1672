"""The audio side in ONNX Runtime: the manifest's chain of graphs, run one after the other per batch of windows.

The chain (``manifest.audio.chain``) names which value feeds which graph input, so the same executor runs
GaMMA's four graphs (two experts, fusion, projector) and AF-Whisper's two (encoder, projector with rotary
time embeddings) without knowing either family. ``providers`` is ONNX Runtime's list (best first), so the
CUDA and TensorRT execution providers plug in without changing anything else. ORT releases the GIL while
it runs, so the pipeline prefills the decoder on the main thread while this encodes the next window.

Values pass between the graphs as ORT values bound with IOBinding on the backend's device: on a GPU the
experts' outputs stay in device memory and fusion reads them there, with no host round trip; only the
window's inputs go up and the embeddings come down. With ``cuda_graphs`` (CUDA provider only) each batch
size's run is captured once as a CUDA graph (``gpu_graph_id`` = the batch) and replayed, with inputs and
outputs in fixed device buffers, as ORT's CUDA graph support requires.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gamma_rt.audio_chain import EMBEDDINGS
from gamma_rt.errors import BundleError, GammaError
from gamma_rt.manifest import MANIFEST_NAME, Manifest

from .onnx_graph import check_signature, control_flow_ops
from .ort_run import OrtRuns, capped_session_options
from .timings import StageTimes

# numpy dtype of each graph tensor type the manifest may record
DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "bool": np.bool_}


class OrtBackend:
    """The bundle's audio graphs of one precision in ONNX Runtime sessions.

    ``record``: the backends table's entry (runtime/backends.py): which graphs, which providers, which device.
    Without it, ``providers`` (default CPU) and the ORT-optimized graphs are used, values kept on the CPU."""

    def __init__(self, bundle: str | Path, manifest: Manifest, precision: str = "fp32", providers: list | None = None,
                 threads: int | None = None, name: str = "ort-cpu", reason: str = "", record=None,
                 cuda_graphs: bool = False):
        import onnxruntime as ort

        from .backends import check_providers, ort_graph_key

        self.bundle, self.name, self.precision = Path(bundle), name, precision
        self.chain = manifest.audio.chain
        self.times = StageTimes()
        self.device = record.device if record is not None else "cpu"
        graphs = record.graphs if record is not None else "ort"
        self.cuda_graphs = cuda_graphs and self.device == "cuda"
        self.sessions, self.specs, self.keys, running = {}, {}, {}, {}
        self.runs = OrtRuns()
        for step in self.chain:
            key = ort_graph_key(step.component, precision, graphs)
            path = manifest.path(bundle, key)
            self.specs[step.component] = spec = manifest.component(key)
            self.keys[step.component] = key
            wanted = record.providers(self.bundle, precision == "fp16", spec.inputs) if record is not None else \
                (providers or ["CPUExecutionProvider"])
            if self.cuda_graphs:
                wanted = [(p[0], {**p[1], "enable_cuda_graph": "1"}) if isinstance(p, tuple) and
                          p[0] == "CUDAExecutionProvider" else p for p in wanted]
            where = str(self.bundle / MANIFEST_NAME)
            loops = control_flow_ops(path)
            if loops:
                raise BundleError(f"{path}: components.{key} holds {', '.join(sorted(loops))}; audio graphs are "
                                  "straight-line, and a loop in one could run without end")
            session = self.sessions[step.component] = self._session(ort, path, key, wanted, threads)
            check_signature(session, spec, step, key, where)
            running[step.component] = session.get_providers()
            check_providers(wanted, running[step.component], f"{path} (components.{key})")
        self.providers = sorted({p for r in running.values() for p in r})
        self.reason = f"{reason} (running: {', '.join(running[self.chain[0].component])})"
        first = self.specs[self.chain[0].component]
        mel_input = next((g for g, v in self.chain[0].inputs.items() if v == "mel"), None)
        spec = next((s for s in first.inputs if s.name == mel_input), None)
        self.mel_shape = tuple(spec.shape[1:]) if spec else None
        self._fixed: dict[int, dict] = {}  # batch -> fixed device values (CUDA graphs)

    @staticmethod
    def _session(ort, path: Path, key: str, providers: list, threads: int | None):
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # ORT's pool spin-waits between parallel sections and after a run; in gamma-rt it always shares the
        # process, and often the cores, with llama.cpp's threads, which it then starves (issue 23)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        capped_session_options(ort, options)
        try:
            return ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types for a file it cannot load
            raise BundleError(f"{path}: ONNX Runtime cannot load components.{key} "
                              f"({str(e).splitlines()[0][:200]})") from None

    def encode(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """``feeds``: ``mel`` (B, n_mels, frames) float32 log-mel, ``mel_mask`` (B, frames) int64 and
        ``window_index`` (B,) int64 -> (B, tokens_per_window, n_embd) float32 embeddings."""
        mel = np.ascontiguousarray(feeds["mel"], dtype=np.float32)
        if self.mel_shape and (mel.ndim != 3 or tuple(mel.shape[1:]) != self.mel_shape):
            raise GammaError(f"mel of shape {mel.shape}: the bundle's encoders take (batch, {self.mel_shape[0]}, "
                             f"{self.mel_shape[1]})")
        if self.cuda_graphs:
            return self._encode_graphed({**feeds, "mel": mel})
        import onnxruntime as ort

        values = {k: ort.OrtValue.ortvalue_from_numpy(self._typed(k, v), self.device, 0) for k, v in feeds.items()
                  if self._is_read(k)}
        values["mel"] = ort.OrtValue.ortvalue_from_numpy(mel, self.device, 0)
        for step in self.chain:
            binding = self.sessions[step.component].io_binding()
            for graph_input, value in step.inputs.items():
                binding.bind_ortvalue_input(graph_input, values[value])
            for graph_output in step.outputs:
                binding.bind_output(graph_output, self.device, 0)  # ORT allocates it there, in the graph's dtype
            self._run(step.component, binding)
            for graph_output, value in zip(step.outputs, binding.get_outputs()):
                values[step.outputs[graph_output]] = value
        return values[EMBEDDINGS].numpy().astype(np.float32, copy=False)

    def _is_read(self, value: str) -> bool:
        return any(value in step.inputs.values() for step in self.chain)

    def _typed(self, value: str, array: np.ndarray) -> np.ndarray:
        """``array`` in the dtype of the first graph input that reads ``value``, as the manifest records it."""
        for step in self.chain:
            for graph_input, v in step.inputs.items():
                if v == value:
                    spec = next((s for s in self.specs[step.component].inputs if s.name == graph_input), None)
                    dtype = DTYPES.get(spec.dtype, np.float32) if spec else np.asarray(array).dtype
                    return np.ascontiguousarray(array, dtype=dtype)
        return np.ascontiguousarray(array)

    def _run(self, stage: str, binding, config: dict | None = None) -> None:
        where = f"{self.bundle / self.specs[stage].file} (components.{self.keys[stage]})"
        with self.times.stage(stage):
            self.runs.run(lambda options: self.sessions[stage].run_with_iobinding(binding, options), where, config)

    def interrupt(self) -> None:
        """Stop the runs in flight on any thread (they raise KeyboardInterrupt): Ctrl-C while another
        thread waits on ONNX Runtime."""
        self.runs.interrupt()

    def _encode_graphed(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The chain with every value in a fixed device buffer per batch size, replayed as CUDA graphs."""
        import onnxruntime as ort

        batch = feeds["mel"].shape[0]
        fixed = self._fixed.get(batch)
        if fixed is None:
            fixed = self._fixed[batch] = self._fixed_values(ort, feeds, batch)
        for k, v in feeds.items():
            if k in fixed["values"]:
                fixed["values"][k].update_inplace(self._typed(k, v))
        config = {"gpu_graph_id": str(batch)}  # one captured graph per batch size
        for step in self.chain:
            self._run(step.component, fixed["bindings"][step.component], config)
        return fixed["values"][EMBEDDINGS].numpy().astype(np.float32, copy=False)

    def _fixed_values(self, ort, feeds: dict[str, np.ndarray], batch: int) -> dict:
        values = {k: ort.OrtValue.ortvalue_from_numpy(self._typed(k, v), self.device, 0) for k, v in feeds.items()
                  if self._is_read(k)}
        bindings = {}
        for step in self.chain:
            binding = self.sessions[step.component].io_binding()
            for graph_input, value in step.inputs.items():
                binding.bind_ortvalue_input(graph_input, values[value])
            specs = {s.name: s for s in self.specs[step.component].outputs}
            for graph_output, value in step.outputs.items():
                s = specs[graph_output]
                values[value] = ort.OrtValue.ortvalue_from_shape_and_type(
                    [batch, *s.shape[1:]], DTYPES.get(s.dtype, np.float32), self.device, 0)
                binding.bind_ortvalue_output(graph_output, values[value])
            bindings[step.component] = binding
        return {"values": values, "bindings": bindings}

    def close(self) -> None:
        self.sessions, self._fixed = {}, {}
