"""The decoder session: a GGUF Qwen3 in llama.cpp, fed text tokens and audio embeddings, sampled token by token.

Built on llama-cpp-python's low-level API (the ``llama_*`` C functions), because the high-level ``Llama``
class cannot take embeddings in the middle of a prompt nor decode several sequences in one batch.

One context holds up to ``n_seq_max`` sequences in one unified KV cache, so :meth:`DecoderSession.fork`
shares a prefix (a song's audio) between questions without copying it, and :meth:`generate_parallel`
decodes the questions together, one batch per step.
"""

from __future__ import annotations

import codecs
import ctypes
import functools
import logging
import math
import os
from pathlib import Path
from typing import Iterator

import llama_cpp
import numpy as np

from gamma_rt.errors import BundleError, GammaError
from gamma_rt.machine import default_decoder_threads

from .gguf_check import check_gguf
from .sampling import Sampling, StopFilter, sampler_chain

__all__ = ["AnswerText", "DecoderSession", "Sampling", "context_size_for"]

_backend_ready = False
_ALL_F32 = 0  # general.file_type of a GGUF whose weights are all F32
_KV_TYPES = {"f32": 0, "f16": 1}  # GGML type ids


def context_size_for(audio_seconds: float, tokens_per_second: float, prompt_tokens: int, max_new_tokens: int) -> int:
    """KV cache size (tokens) for one song: its audio tokens + the text of the prompt + the answer.

    Rounded up to a multiple of 256, the granularity llama.cpp pads its cache to anyway.
    """
    needed = math.ceil(audio_seconds * tokens_per_second) + prompt_tokens + max_new_tokens
    return max(256, -(-needed // 256) * 256)


def kv_bytes_per_cell(metadata: dict, kv_type: str) -> int:
    """Bytes one KV cache cell (one token of one sequence) takes: keys and values of every layer."""
    arch = metadata.get("general.architecture", "")
    heads = metadata.get(f"{arch}.attention.head_count", 1)
    kv_heads = metadata.get(f"{arch}.attention.head_count_kv", heads)
    head_dim = metadata.get(f"{arch}.embedding_length", 0) // max(1, heads)
    k = metadata.get(f"{arch}.attention.key_length", head_dim)
    v = metadata.get(f"{arch}.attention.value_length", head_dim)
    return metadata.get(f"{arch}.block_count", 0) * kv_heads * (k + v) * (4 if kv_type == "f32" else 2)


ALL_LAYERS = 999  # more layers than any model has: llama.cpp offloads every layer and the output


def gpu_layers_for(requested: int | None) -> int:
    """The decoder layers to put on the GPU: ``requested`` (None = all) where this llama.cpp build can offload
    (a CUDA, Metal or Vulkan build), else 0."""
    if not llama_cpp.llama_supports_gpu_offload():
        return 0
    return ALL_LAYERS if requested is None else requested


# GGML types llama.cpp's AMX kernels take (ggml-cpu/amx/common.h, qtype_has_amx_kernels): Q4_0, Q4_1, Q8_0,
# Q4_K, Q5_K, Q6_K, IQ4_XS
AMX_KERNEL_TYPES = frozenset({2, 3, 8, 12, 13, 14, 23})
KEEP_AMX_ENV = "GAMMA_LLAMA_AMX"


def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """The CPU has Intel AMX tiles (Sapphire Rapids and later): /proc/cpuinfo's flags name amx_int8."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_int8" in line.split()
    except OSError:
        pass
    return False


def extra_buffers_allowed(tensor_types, has_amx: bool, keep_amx: bool = False) -> bool:
    """Whether llama.cpp may put this GGUF's weights in its extra CPU buffer types (AMX tiles, repacked rows).

    Not where AMX kernels would take them: the AMX matrix multiply of the pinned llama.cpp crashes the process
    (SIGSEGV in ggml_backend_amx_mul_mat, ggml-org/llama.cpp#20824; seen here on a Q8_0 GGUF on a Xeon with
    AMX, where the same file runs with the extra buffers off). Their weights then take the ordinary AVX-512
    path. ``keep_amx`` (``GAMMA_LLAMA_AMX=1``) keeps them on, for a llama.cpp build that has the fix."""
    if keep_amx or not has_amx:
        return True
    return not any(t in AMX_KERNEL_TYPES for t in tensor_types)


def extra_buffers_for(header) -> bool:
    """:func:`extra_buffers_allowed` for a checked GGUF header on this machine (``GAMMA_LLAMA_AMX`` read here)."""
    return extra_buffers_allowed({t.ggml_type for t in header.tensors}, _this_cpu_has_amx(),
                                 os.environ.get(KEEP_AMX_ENV) == "1")


@functools.cache
def _this_cpu_has_amx() -> bool:
    return cpu_has_amx()


def quiet_llama_logs() -> None:
    """Keep llama.cpp's log to errors. llama-cpp-python prints every line (model dumps, graph stats) unless
    its logger says otherwise; an application that configured that logger itself is left alone."""
    log = logging.getLogger("llama-cpp-python")
    if log.level == logging.NOTSET:
        log.setLevel(logging.ERROR)


class AnswerText:
    """One answer's text as its tokens arrive: token bytes in, complete UTF-8 text out, cut before the first
    stop string (which is never emitted).

    A token may end inside a UTF-8 sequence, and text may be the start of a stop string; both are held back
    until a later token (or :meth:`finish`) decides them. ``text`` is everything emitted so far.
    """

    def __init__(self, stop: list[str] | tuple[str, ...] = ()):
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = StopFilter(stop)
        self.text = ""

    @property
    def stopped(self) -> bool:
        """A stop string has appeared: the answer is complete."""
        return self._stops.stopped

    def feed(self, token_bytes: bytes) -> str:
        """The text that one more token makes safe to emit (often "", never part of a stop string)."""
        return self._emit(self._stops.feed(self._utf8.decode(token_bytes)))

    def finish(self) -> str:
        """At the end of generation: whatever was held back (a cut UTF-8 sequence becomes U+FFFD)."""
        if self.stopped:
            return ""
        piece = self._stops.feed(self._utf8.decode(b"", final=True))
        return self._emit(piece if self.stopped else piece + self._stops.flush())

    def _emit(self, piece: str) -> str:
        self.text += piece
        return piece


class DecoderSession:
    """A loaded GGUF plus one llama.cpp context. Use as a context manager; :meth:`close` frees both."""

    def __init__(
        self,
        gguf_path: str | Path,
        n_ctx: int,
        n_threads: int | None = None,
        n_gpu_layers: int | None = 0,
        n_seq_max: int = 8,
        n_batch: int = 512,
        kv_type: str | None = None,
        shared_cells: bool = True,
        lora: str | Path | None = None,
    ):
        """``n_ctx`` is the KV cache size in tokens, shared by all ``n_seq_max`` sequences (see
        :func:`context_size_for`). ``n_gpu_layers`` layers go to the GPU when llama.cpp was built with CUDA
        (``llama_supports_gpu_offload``), None meaning all of them; on a CPU-only build the request is ignored
        (``self.gpu_layers`` says what was asked of llama.cpp). ``kv_type`` "f32" or
        "f16" is the KV cache's type; by default f32 for an all-F32 GGUF (exact parity with the reference:
        f32 cache, no flash attention), else f16 (half the memory). ``shared_cells``: one pool of cells for all
        sequences, so :meth:`fork` shares a prefix without copying it; False gives each sequence its own
        n_ctx / n_seq_max cells, and its attention reads only those (a server's sequences share nothing)."""
        global _backend_ready
        self.path = Path(gguf_path)
        self._model = self._ctx = None
        self._token_batch = self._embd_batch = None
        header = check_gguf(self.path)  # llama.cpp may crash on a truncated file instead of failing cleanly
        if kv_type is None:
            kv_type = "f32" if header.metadata.get("general.file_type") == _ALL_F32 else "f16"
        if kv_type not in _KV_TYPES:
            raise ValueError(f"kv_type {kv_type!r}: choose one of {', '.join(_KV_TYPES)}")
        self.kv_bytes_per_cell = kv_bytes_per_cell(header.metadata, kv_type)
        self.kv_type = kv_type
        # with an f32 cache flash attention is off: attention then computes every cell in use, masked or not
        self.flash_attention = kv_type != "f32"
        self.shared_cells = shared_cells
        if not _backend_ready:
            quiet_llama_logs()
            llama_cpp.llama_backend_init()
            _backend_ready = True

        mparams = llama_cpp.llama_model_default_params()
        if n_gpu_layers is not None and n_gpu_layers < 0:
            raise ValueError(f"n_gpu_layers must be 0 or more (None for all), got {n_gpu_layers}")
        self.gpu_layers = gpu_layers_for(n_gpu_layers)
        mparams.n_gpu_layers = self.gpu_layers
        mparams.use_extra_bufts = extra_buffers_for(header)
        self._model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self._model:
            raise BundleError(f"{self.path}: llama.cpp could not load this GGUF (unsupported architecture or tensors)")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_embd = llama_cpp.llama_model_n_embd(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)

        threads = n_threads or default_decoder_threads()  # half the cores: the barrier stalls on a busy core
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = cparams.n_ubatch = n_batch
        cparams.n_seq_max = n_seq_max
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.kv_unified = shared_cells
        cparams.no_perf = True
        cparams.type_k = cparams.type_v = _KV_TYPES[kv_type]
        if kv_type == "f32":  # llama.cpp's CPU flash-attention kernel rounds to f16; exactness wants it off
            cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self._ctx = llama_cpp.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            self.close()
            raise GammaError(f"{self.path}: llama.cpp could not create a {n_ctx}-token context (out of memory?)")
        if lora is not None:
            self._apply_lora(Path(lora))
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self.n_ctx = llama_cpp.llama_n_ctx(self._ctx)
        self.cells_per_sequence = llama_cpp.llama_n_ctx_seq(self._ctx)  # n_ctx, or its share without shared_cells
        self.n_batch = n_batch
        self.n_seq_max = n_seq_max
        self.generated: dict[int, list[int]] = {}  # sequence -> token ids of its last generated answer
        self._token_batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._embd_batch = llama_cpp.llama_batch_init(n_batch, self.n_embd, 1)

    def _apply_lora(self, path: Path) -> None:
        check_gguf(path, adapter=True)
        self._lora = llama_cpp.llama_adapter_lora_init(self._model, str(path).encode())
        if not self._lora:
            self.close()
            raise BundleError(f"{path}: llama.cpp could not load this LoRA adapter on {self.path.name} "
                              "(made for another base?)")
        adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._lora)
        scales = (ctypes.c_float * 1)(1.0)
        if llama_cpp.llama_set_adapters_lora(self._ctx, adapters, 1, scales) != 0:
            self.close()
            raise BundleError(f"{path}: llama.cpp refused to apply this LoRA adapter")

    # --- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        for batch in ("_token_batch", "_embd_batch"):
            if getattr(self, batch, None) is not None:
                llama_cpp.llama_batch_free(getattr(self, batch))
                setattr(self, batch, None)
        if getattr(self, "_ctx", None):
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_lora", None):  # before its model
            llama_cpp.llama_adapter_lora_free(self._lora)
            self._lora = None
        if getattr(self, "_model", None):
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> "DecoderSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()

    # --- text ----------------------------------------------------------------------------------

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """Token ids of ``text``; with ``special`` the control tokens written in it (``<|im_start|>``) are parsed."""
        data = text.encode("utf-8")
        size = len(data) + 16
        for _ in range(2):
            buf = (llama_cpp.llama_token * size)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, size, False, special)
            if n >= 0:
                return list(buf[:n])
            size = -n
        raise RuntimeError(f"llama_tokenize needed {size} slots twice")

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        """The bytes a token stands for; control tokens give b"" unless ``special``."""
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def detokenize(self, tokens: list[int], special: bool = False) -> str:
        return b"".join(self.token_bytes(t, special) for t in tokens).decode("utf-8", errors="replace")

    def is_end(self, token: int) -> bool:
        """End of generation: eos, eot (``<|im_end|>``) and the like."""
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    # --- evaluation ----------------------------------------------------------------------------

    def n_past(self, seq_id: int = 0) -> int:
        """Positions held by ``seq_id`` in the KV cache."""
        return llama_cpp.llama_memory_seq_pos_max(self._memory, seq_id) + 1

    def eval_tokens(self, tokens: list[int], seq_id: int = 0) -> None:
        """Append text tokens to ``seq_id``; afterwards :meth:`logits` is the next-token distribution."""
        self._check_seq(seq_id)
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            self._run(self._token_batch, [(seq_id, t) for t in chunk], last_logits=True)

    def eval_embeddings(self, embd: np.ndarray, seq_id: int = 0) -> None:
        """Append ``(n, n_embd)`` float32 input embeddings (audio tokens from the projector) to ``seq_id``."""
        self._check_seq(seq_id)
        embd = np.ascontiguousarray(embd, dtype=np.float32)
        if embd.ndim != 2 or embd.shape[1] != self.n_embd:
            raise GammaError(
                f"{self.path}: audio embeddings of shape {embd.shape} do not fit the decoder (n_embd {self.n_embd})"
            )
        for start in range(0, len(embd), self.n_batch):
            chunk = embd[start : start + self.n_batch]
            ctypes.memmove(self._embd_batch.embd, chunk.ctypes.data, chunk.nbytes)
            self._run(self._embd_batch, [(seq_id, None)] * len(chunk), last_logits=True)

    def logits(self, index: int = -1) -> np.ndarray:
        """(n_vocab,) float32 logits of the last evaluated position (or of output ``index`` of the last batch)."""
        ptr = llama_cpp.llama_get_logits_ith(self._ctx, index)
        if not ptr:
            raise RuntimeError("no logits: nothing evaluated yet")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def fork(self, src_seq: int, dst_seq: int) -> None:
        """Make ``dst_seq`` continue from ``src_seq``'s cache; the shared cells are not copied."""
        self._check_seq(dst_seq)
        llama_cpp.llama_memory_seq_rm(self._memory, dst_seq, -1, -1)
        llama_cpp.llama_memory_seq_cp(self._memory, src_seq, dst_seq, -1, -1)

    def clear(self, seq_id: int | None = None) -> None:
        """Forget one sequence, or all of them."""
        if seq_id is None:
            llama_cpp.llama_memory_clear(self._memory, True)
        else:
            llama_cpp.llama_memory_seq_rm(self._memory, seq_id, -1, -1)

    def _check_seq(self, seq_id: int) -> None:
        if not 0 <= seq_id < self.n_seq_max:
            raise ValueError(f"seq_id {seq_id} outside 0..{self.n_seq_max - 1} (n_seq_max)")

    def _run(self, batch, items: list[tuple[int, int | None]], last_logits: bool, logits_for=None) -> None:
        """Fill ``batch`` with (seq_id, token) items at each sequence's next position and decode it.

        Logits are kept for the last item (``last_logits``) or for the item indices in ``logits_for``.
        """
        positions: dict[int, int] = {}
        for i, (seq, token) in enumerate(items):
            pos = positions.setdefault(seq, self.n_past(seq))
            positions[seq] = pos + 1
            if token is not None:
                batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = (last_logits and i == len(items) - 1) or (logits_for is not None and i in logits_for)
        batch.n_tokens = len(items)
        rc = llama_cpp.llama_decode(self._ctx, batch)
        if rc == 1:
            raise GammaError(
                f"{self.path}: the decoder's {self.n_ctx}-token context is full; give it a larger n_ctx"
            )
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}")

    # --- generation ----------------------------------------------------------------------------

    def _chain(self, sampling: Sampling):
        """A llama.cpp sampler chain, or None for plain greedy (no grammar): then :meth:`_sample` takes the
        argmax of the logits in place. Same token (the first maximum, as llama.cpp's greedy sampler picks), but
        llama_sampler_sample first copies the whole vocabulary into a candidate array, which on a GPU decode
        step of a few ms was a measurable share (bench/results/GPU.md)."""
        if sampling.temperature <= 0 and sampling.grammar is None:
            return None
        return sampler_chain(sampling, self._vocab)

    def _sample(self, chain, index: int) -> int:
        if chain is not None:
            return llama_cpp.llama_sampler_sample(chain, self._ctx, index)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, index), shape=(self.n_vocab,))
        return int(logits.argmax())

    def logprobs(self, index: int, token: int, top: int = 0) -> tuple[float, list[tuple[int, float]]]:
        """Log-probability of ``token`` under output ``index`` of the last batch (the model's distribution,
        before temperature or grammar), and the ``top`` most likely tokens with theirs, most likely first."""
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, index), shape=(self.n_vocab,))
        peak = float(logits.max())
        norm = peak + float(np.log(np.exp(logits - peak, dtype=np.float64).sum()))
        best: list[tuple[int, float]] = []
        if top > 0:
            ids = np.argpartition(-logits, min(top, self.n_vocab) - 1)[:top]
            ids = ids[np.argsort(-logits[ids], kind="stable")]
            best = [(int(i), float(logits[i]) - norm) for i in ids]
        return float(logits[token]) - norm, best

    @staticmethod
    def _free(chain) -> None:
        if chain is not None:
            llama_cpp.llama_sampler_free(chain)

    def sampler(self, sampling: Sampling):
        """A sampler for one sequence's answer, to pass to :meth:`step`; None stands for plain greedy.
        Free it with :meth:`free_sampler` when the answer is done."""
        return self._chain(sampling)

    free_sampler = _free

    def step(self, items: list[tuple[int, int]], samplers: list) -> list[int]:
        """One decode step over several sequences in one llama_decode batch: append token ``t`` to sequence
        ``s`` for each ``(s, t)`` in ``items`` (one item per sequence), then draw each sequence's next token
        with its own sampler (``samplers[i]`` for ``items[i]``). Returns the drawn token ids, in order.

        A server steps its running answers with this, one token each, and can add or drop sequences between
        steps; a sequence's first step passes the last token of its prompt. Without ``shared_cells``, llama.cpp
        runs the batch as one pass only over consecutive sequence ids in increasing order, and splits any other
        into one pass per such run (a step of 8 small-preset sequences on 2 cores: 236 ms in increasing order,
        658 ms in decreasing order; bench/serve_steps.py), so give the items sorted and keep the ids packed.
        Gaps in a sorted run (a sequence between two stepped ones that is idle, or still prefilling) are
        filled for the pass with a throwaway token at that sequence's next position, removed right after:
        one more row of the batch instead of one more pass over all the weights. A sequence whose cells are
        full is not filled; the batch is then split there as before."""
        if len(items) != len(samplers):
            raise ValueError(f"{len(items)} items but {len(samplers)} samplers")
        if len(items) > self.n_batch:
            raise ValueError(f"{len(items)} sequences exceed n_batch {self.n_batch}")
        if len({seq for seq, _ in items}) != len(items):
            raise ValueError("step takes one item per sequence")
        for seq, _ in items:
            self._check_seq(seq)
        batch, rows, fillers = self._filled(items)
        try:
            self._run(self._token_batch, batch, last_logits=False, logits_for=set(rows))
        finally:
            for seq, pos in fillers:
                llama_cpp.llama_memory_seq_rm(self._memory, seq, pos, -1)
        return [self._sample(chain, rows[i]) for i, chain in enumerate(samplers)]

    def _filled(self, items: list[tuple[int, int]]) -> tuple[list, list[int], list[tuple[int, int]]]:
        """(the batch, each item's row in it, the (sequence, position) of each throwaway token): ``items``
        with the gaps of their sorted sequence run filled (see :meth:`step`), where cells are per sequence."""
        seqs = [seq for seq, _ in items]
        span = seqs[-1] - seqs[0] + 1
        if self.shared_cells or span == len(items) or span > self.n_batch or seqs != sorted(seqs):
            return items, list(range(len(items))), []
        have = dict(items)
        batch, rows, fillers = [], [], []
        filler = items[0][1]  # any token: its cell is removed after the pass
        for seq in range(seqs[0], seqs[-1] + 1):
            if seq in have:
                rows.append(len(batch))
                batch.append((seq, have[seq]))
                continue
            pos = self.n_past(seq)
            if pos >= self.cells_per_sequence:  # no room for the throwaway cell: leave the gap (two passes)
                continue
            fillers.append((seq, pos))
            batch.append((seq, filler))
        return batch, rows, fillers

    def generate(
        self, sampling: Sampling, max_tokens: int, stop: list[str] | tuple[str, ...] = (), seq_id: int = 0
    ) -> Iterator[str]:
        """Stream the answer's text from the current logits of ``seq_id``.

        Ends at an end-of-generation token, at a stop string (never emitted) or after ``max_tokens``.
        Each accepted token is evaluated, so the cache holds the answer for a follow-up turn.
        """
        self.logits()  # raises if nothing was evaluated: llama.cpp would sample from a null pointer
        chain = self._chain(sampling)
        answer = AnswerText(stop)
        self.generated[seq_id] = ids = []
        try:
            for _ in range(max_tokens):
                token = self._sample(chain, -1)
                if self.is_end(token):
                    break
                ids.append(token)
                self.eval_tokens([token], seq_id)
                piece = answer.feed(self.token_bytes(token))
                if piece:
                    yield piece
                if answer.stopped:
                    return
            tail = answer.finish()
            if tail:
                yield tail
        finally:
            self._free(chain)

    def generate_parallel(
        self, prompts: dict[int, list[int]], sampling: Sampling, max_tokens: int, stop=()
    ) -> dict[int, str]:
        """Answer several sequences at once: each gets its prompt appended, then all decode one batch per step.

        Typical use: eval the audio on sequence 0, ``fork(0, k)`` per question, then pass {k: question tokens}.
        Each sequence samples with its own chain seeded alike, so the result equals running them one by one.
        """
        if len(prompts) > self.n_batch:
            raise ValueError(f"{len(prompts)} sequences exceed n_batch {self.n_batch}")
        for seq, tokens in prompts.items():
            self._check_seq(seq)
            if not tokens:
                raise ValueError(f"sequence {seq}: empty prompt; the first token needs a prompt to follow")
            if len(tokens) > 1:
                self.eval_tokens(tokens[:-1], seq)
        chains = {seq: self._chain(sampling) for seq in prompts}
        answers = {seq: AnswerText(stop) for seq in prompts}
        for seq in prompts:
            self.generated[seq] = []
        step = [(seq, tokens[-1]) for seq, tokens in prompts.items()]
        try:
            for _ in range(max_tokens + 1):
                self._run(self._token_batch, step, last_logits=False, logits_for=range(len(step)))
                if _ == max_tokens:
                    break
                next_step = []
                for i, (seq, _token) in enumerate(step):
                    token = self._sample(chains[seq], i)
                    if self.is_end(token):
                        continue
                    self.generated[seq].append(token)
                    answers[seq].feed(self.token_bytes(token))
                    if not answers[seq].stopped:
                        next_step.append((seq, token))
                if not next_step:
                    break
                step = next_step
        finally:
            for chain in chains.values():
                self._free(chain)
        for answer in answers.values():
            answer.finish()
        return {seq: answer.text for seq, answer in answers.items()}
