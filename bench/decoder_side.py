"""Decoder cost: prefill of one window's audio embeddings and greedy decode, three ways.

- ``raw_llama_loop``: llama.cpp through llama-cpp-python's low-level C API and nothing else — one
  ``llama_decode`` of the window's embeddings, then ``llama_decode`` of one token + argmax per step.
  The floor any runtime on the same GGUF can reach; the runtime's decode rate is judged against it.
- ``transformers_generate``: the checkpoint's Qwen3ForCausalLM, ``generate(inputs_embeds=...)``, greedy:
  how GaMMA's PyTorch code decodes today.
- ``llama_bench``: llama.cpp's own ``llama-bench`` tg/pp figures, where the native build exists.

Every way gets the same (1, tokens_per_window, n_embd) float32 embeddings and the same thread count.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from gamma_rt.manifest import Manifest

from .timing import Stats, measure, summarize


def gguf_variants(manifest: Manifest) -> dict[str, str]:
    """GGUF type (``f32``, ``f16``, ``q8_0``, ``q4_k_m``...) -> component name, from the bundle's manifest."""
    return {c.precision.lower(): name for name, c in manifest.components.items() if c.kind == "gguf"}


def audio_embeddings(n_tokens: int, n_embd: int, seed: int = 0) -> np.ndarray:
    """(n_tokens, n_embd) float32 at the scale of a projector's output (unit RMS)."""
    return np.random.default_rng(seed).standard_normal((n_tokens, n_embd)).astype(np.float32)


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _quiet_log(level, text, user_data):  # llama.cpp logs every load at INFO; a benchmark's output stays readable
    return None


class RawLlamaLoop:
    """A llama.cpp model + context opened through the C API; call :meth:`prefill` then :meth:`step`."""

    def __init__(self, gguf: str | Path, n_ctx: int, threads: int, n_gpu_layers: int = 0, f32_cache: bool = False):
        """``f32_cache``: an f32 KV cache without flash attention, as the runtime picks for an all-F32 GGUF,
        so both read and write the same bytes per token; otherwise llama.cpp's defaults (f16 cache)."""
        import llama_cpp as L

        self.L = L
        L.llama_log_set(_quiet_log, None)
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = n_gpu_layers
        self.model = L.llama_model_load_from_file(str(gguf).encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_ctx
        cp.n_threads = cp.n_threads_batch = threads
        if f32_cache:
            cp.type_k = cp.type_v = 0  # GGML_TYPE_F32
            cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.n_embd = L.llama_model_n_embd(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.embd_batch = L.llama_batch_init(n_ctx, self.n_embd, 1)
        self.token_batch = L.llama_batch_init(1, 0, 1)
        self.n_past = 0

    def prefill(self, embeddings: np.ndarray) -> int:
        """Clear the KV cache and decode ``(n, n_embd)`` embeddings from position 0; returns the argmax token."""
        L, b = self.L, self.embd_batch
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        n = len(embeddings)
        ctypes.memmove(b.embd, np.ascontiguousarray(embeddings, dtype=np.float32).ctypes.data, embeddings.nbytes)
        for i in range(n):
            b.pos[i] = i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = i == n - 1
        b.n_tokens = n
        self._decode(b)
        self.n_past = n
        return self._argmax()

    def step(self, token: int) -> int:
        """Decode one token at the next position; returns the greedy next token."""
        b = self.token_batch
        b.token[0] = token
        b.pos[0] = self.n_past
        b.n_seq_id[0] = 1
        b.seq_id[0][0] = 0
        b.logits[0] = True
        b.n_tokens = 1
        self._decode(b)
        self.n_past += 1
        return self._argmax()

    def close(self) -> None:
        L = self.L
        L.llama_batch_free(self.embd_batch)
        L.llama_batch_free(self.token_batch)
        L.llama_free(self.ctx)
        L.llama_model_free(self.model)

    def _decode(self, batch) -> None:
        rc = self.L.llama_decode(self.ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def _argmax(self) -> int:
        logits = np.ctypeslib.as_array(self.L.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,))
        return int(logits.argmax())


def raw_llama_loop(gguf: str | Path, embeddings: np.ndarray, n_decode: int, threads: int, repeat: int,
                   warmup: int, n_gpu_layers: int = 0, f32_cache: bool = False) -> dict[str, Stats]:
    """``prefill_ms`` (one window of embeddings) and ``decode_ms_per_token`` (median over all steps of all repeats)."""
    loop = RawLlamaLoop(gguf, n_ctx=len(embeddings) + n_decode + 8, threads=threads, n_gpu_layers=n_gpu_layers,
                        f32_cache=f32_cache)
    try:
        prefill = measure(lambda: loop.prefill(embeddings), repeat, warmup)
        steps = []
        for _ in range(repeat):
            token = loop.prefill(embeddings)
            steps.append(measure(lambda: _advance(loop, token), n_decode, warmup=0).samples)
        return {"prefill_ms": prefill, "decode_ms_per_token": summarize([t for s in steps for t in s])}
    finally:
        loop.close()


def _advance(loop: RawLlamaLoop, token: int) -> None:
    # feeding the same token each step costs exactly what feeding the argmax does; the argmax is still taken
    loop.step(token)


def runtime_decoder(gguf: str | Path, embeddings: np.ndarray, n_decode: int, threads: int, repeat: int,
                    warmup: int, n_gpu_layers: int = 0) -> dict[str, Stats]:
    """The runtime's DecoderSession on the same GGUF and embeddings: ``eval_embeddings`` then greedy
    ``generate``. ms/token is generate's time over the tokens it evaluated (it may stop early at an
    end token; ``tokens_decoded`` says how many)."""
    import time

    from gamma_rt.runtime.decoder import DecoderSession, Sampling

    prefill, per_token, counts = [], [], []
    with DecoderSession(gguf, n_ctx=len(embeddings) + n_decode + 8, n_threads=threads, n_gpu_layers=n_gpu_layers,
                        n_seq_max=1, n_batch=len(embeddings)) as session:
        for i in range(warmup + repeat):
            session.clear()
            t0 = time.perf_counter()
            session.eval_embeddings(embeddings)
            t1 = time.perf_counter()
            before = session.n_past()
            for _ in session.generate(Sampling(), max_tokens=n_decode):
                pass
            t2 = time.perf_counter()
            n = session.n_past() - before
            if i >= warmup and n > 0:
                prefill.append((t1 - t0) * 1e3)
                per_token.append((t2 - t1) * 1e3 / n)
                counts.append(n)
    if not per_token:
        raise RuntimeError(f"{gguf}: greedy decoding ended at once every time; no decode rate to measure")
    return {"prefill_ms": summarize(prefill), "decode_ms_per_token": summarize(per_token),
            "tokens_decoded": summarize(counts)}


def transformers_generate(checkpoint: str | Path, embeddings: np.ndarray, n_decode: int, threads: int,
                          repeat: int, warmup: int) -> dict[str, Stats]:
    """Greedy ``generate`` of the checkpoint's Qwen3 from the window's embeddings (fp32 eager).

    ``prefill_ms`` is a 1-token generate; ``decode_ms_per_token`` is (t(n_decode + 1) - t(1)) / n_decode,
    per repeat, so generate's own per-call overhead is charged to prefill, as it is in use.
    """
    import torch

    from gamma_rt.export.checkpoint import Checkpoint

    torch.set_num_threads(threads)
    llm = Checkpoint(checkpoint).model().llm
    embeds = torch.from_numpy(embeddings)[None]

    def generate(n: int):
        with torch.inference_mode():
            return llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                                max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    prefill = measure(lambda: generate(1), repeat, warmup)
    long = measure(lambda: generate(n_decode + 1), repeat, warmup=0)
    per_token = [max(0.0, (t - p) / n_decode) for t, p in zip(long.samples, prefill.samples)]
    return {"prefill_ms": prefill, "decode_ms_per_token": summarize(per_token)}


def llama_bench_figures(gguf: str | Path, n_prompt: int, n_decode: int, threads: int, repeat: int) -> dict:
    """llama-bench's pp/tg ms per token, or why there are none (no native build here)."""
    from gamma_rt.errors import GammaError

    from .llama_bench import run_llama_bench

    try:
        records = run_llama_bench(gguf, n_prompt=n_prompt, n_gen=n_decode, repetitions=repeat, threads=threads)
    except GammaError as e:
        return {"absent": str(e)}
    return {f"{r.kind}_ms_per_token": r.ms_per_token for r in records}
