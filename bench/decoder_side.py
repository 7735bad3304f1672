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


KV_TYPES = {"f32": 0, "f16": 1}  # GGML type ids, as runtime/decoder.py uses them


def context_settings(n_ctx: int, threads: int, kv_type: str, n_batch: int) -> dict:
    """The llama_context_params fields DecoderSession sets, with the values it gives them, for a raw loop
    that must decode under exactly the runtime's settings (same cache type, flash attention, batch, threads).

    Flash attention: off for an f32 cache (the runtime turns it off for exactness), llama.cpp's default
    (auto) otherwise — again as the runtime leaves it."""
    import llama_cpp as L

    settings = {"n_ctx": n_ctx, "n_batch": n_batch, "n_ubatch": n_batch, "n_threads": threads,
                "n_threads_batch": threads, "type_k": KV_TYPES[kv_type], "type_v": KV_TYPES[kv_type]}
    if kv_type == "f32":
        settings["flash_attn_type"] = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    return settings


class RawLlamaLoop:
    """A llama.cpp model + context opened through the C API; call :meth:`prefill` then :meth:`step`."""

    def __init__(self, gguf: str | Path, n_ctx: int, threads: int, n_gpu_layers: int = 0, kv_type: str = "f16",
                 n_batch: int | None = None):
        """Context settings as :class:`gamma_rt.runtime.decoder.DecoderSession` makes them (see
        :func:`context_settings`): ``kv_type`` "f32" (no flash attention, as the runtime picks for an all-F32
        GGUF) or "f16" (llama.cpp's default cache, flash attention left to llama.cpp). ``n_batch`` defaults to
        ``n_ctx``; it is also the micro-batch, so a window's prefill is one graph in both."""
        import llama_cpp as L

        from gamma_rt.runtime.decoder import extra_buffers_for
        from gamma_rt.runtime.gguf_check import check_gguf

        self.L = L
        L.llama_log_set(_quiet_log, None)
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = n_gpu_layers
        mp.use_extra_bufts = extra_buffers_for(check_gguf(gguf))  # as the runtime's session: no AMX kernels
        self.model = L.llama_model_load_from_file(str(gguf).encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        cp = L.llama_context_default_params()
        settings = context_settings(n_ctx, threads, kv_type, n_batch or n_ctx)
        for name, value in settings.items():
            setattr(cp, name, value)
        self.settings = settings
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.n_embd = L.llama_model_n_embd(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.embd_batch = L.llama_batch_init(settings["n_batch"], self.n_embd, 1)
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


def default_kv_type(gguf_type: str) -> str:
    """The cache type DecoderSession picks for a GGUF of this type: f32 for an all-F32 file, else f16."""
    return "f32" if gguf_type == "f32" else "f16"


def raw_llama_loop(gguf: str | Path, embeddings: np.ndarray, n_decode: int, threads: int, repeat: int,
                   warmup: int, n_gpu_layers: int = 0, kv_type: str = "f16") -> dict[str, Stats]:
    """``prefill_ms`` (one window of embeddings) and ``decode_ms_per_token`` (median over all steps of all repeats)."""
    n = len(embeddings)
    loop = RawLlamaLoop(gguf, n_ctx=n + n_decode + 8, threads=threads, n_gpu_layers=n_gpu_layers, kv_type=kv_type,
                        n_batch=n)
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


def runtime_against_raw(gguf: str | Path, embeddings: np.ndarray, n_decode: int, threads: int, repeat: int,
                        warmup: int, kv_type: str, n_gpu_layers: int = 0, blocks: int = 4) -> dict[str, dict]:
    """The runtime's DecoderSession and the raw loop on the same GGUF, settings and embeddings, interleaved.

    Both contexts are open at once (the GGUF is memory-mapped, so its weights are shared) and each repeat
    alternates them: prefill raw, prefill runtime, then ``blocks`` rounds of (raw steps, runtime ``generate``)
    of ``n_decode / blocks`` tokens each. Load that drifts on a shared machine then hits both alike; measured
    minutes apart, the same two loops differed by 20% on load alone.

    Returns ``{"raw": {...}, "runtime": {...}}``, each with ``prefill_ms`` and ``decode_ms_per_token`` (one
    sample per block, ms per token); the runtime's also ``tokens_decoded`` (generate may stop at an end token)
    and both the context ``settings`` used.
    """
    import time

    from gamma_rt.runtime.decoder import DecoderSession, Sampling

    n = len(embeddings)
    n_ctx = n + n_decode + 8
    per_block = max(1, n_decode // blocks)
    raw = RawLlamaLoop(gguf, n_ctx=n_ctx, threads=threads, n_gpu_layers=n_gpu_layers, kv_type=kv_type, n_batch=n)
    figures = {way: {"prefill": [], "decode": []} for way in ("raw", "runtime")}
    counts = []
    try:
        with DecoderSession(gguf, n_ctx=n_ctx, n_threads=threads, n_gpu_layers=n_gpu_layers, n_seq_max=1,
                            n_batch=n, kv_type=kv_type) as session:
            for i in range(warmup + repeat):
                keep = i >= warmup
                t0 = time.perf_counter()
                token = raw.prefill(embeddings)
                t1 = time.perf_counter()
                session.clear()
                session.eval_embeddings(embeddings)
                t2 = time.perf_counter()
                if keep:
                    figures["raw"]["prefill"].append((t1 - t0) * 1e3)
                    figures["runtime"]["prefill"].append((t2 - t1) * 1e3)
                decoded = 0
                for _ in range(blocks):
                    t0 = time.perf_counter()
                    for _ in range(per_block):
                        raw.step(token)
                    t1 = time.perf_counter()
                    before = session.n_past()
                    for _ in session.generate(Sampling(), max_tokens=per_block):
                        pass
                    t2 = time.perf_counter()
                    got = session.n_past() - before
                    decoded += got
                    if keep and got > 0:
                        figures["raw"]["decode"].append((t1 - t0) * 1e3 / per_block)
                        figures["runtime"]["decode"].append((t2 - t1) * 1e3 / got)
                    if got < per_block:
                        break  # an end token: the runtime's answer is over
                if keep:
                    counts.append(decoded)
    finally:
        raw.close()
    if not figures["runtime"]["decode"]:
        raise RuntimeError(f"{gguf}: greedy decoding ended at once every time; no decode rate to measure")
    out = {way: {"prefill_ms": summarize(f["prefill"]), "decode_ms_per_token": summarize(f["decode"]),
                 "settings": {**raw.settings, "kv_type": kv_type, "interleaved_with": other}}
           for (way, f), other in zip(figures.items(), ("runtime", "llama.cpp-raw"))}
    out["runtime"]["tokens_decoded"] = summarize(counts)
    return out


# gguf-py architecture name of a DecoderSpec -> the transformers class prefix of that decoder
ARCH_CLASSES = {"qwen3": "Qwen3", "qwen2": "Qwen2", "llama": "Llama"}


def decoder_model(checkpoint: str | Path, scratch: str | Path):
    """transformers' causal LM of the checkpoint's decoder, fp32 eager, built from what its family declares
    for the GGUF (export/families: ``decoder()``'s architecture, shape, tensor locations and any merge), so
    it is the same decoder ``export gguf`` writes, for any family. ``scratch``: a folder the family may use."""
    import torch
    import transformers
    from safetensors import safe_open

    from gamma_rt.export.families import detect

    spec = detect(checkpoint).decoder(Path(scratch))
    prefix = ARCH_CLASSES[spec.arch]
    config = getattr(transformers, f"{prefix}Config")(**spec.shape.to_dict())
    config._attn_implementation = "eager"
    state = {}
    for key, (file, stored) in spec.tensors.items():
        with safe_open(file, "pt") as sf:
            weight = sf.get_tensor(stored).float()
        state[key] = torch.from_numpy(spec.merge(key, weight.numpy())) if spec.merge is not None else weight
    if spec.shape.tie_word_embeddings:
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    with torch.no_grad():
        model = getattr(transformers, f"{prefix}ForCausalLM")(config)
    model.load_state_dict(state, strict=True)
    return model.eval()


def transformers_generate(checkpoint: str | Path, embeddings: np.ndarray, n_decode: int, threads: int,
                          repeat: int, warmup: int) -> dict[str, Stats]:
    """Greedy ``generate`` of the checkpoint's decoder (:func:`decoder_model`) from the window's embeddings
    (fp32 eager).

    ``prefill_ms`` is a 1-token generate; ``decode_ms_per_token`` is (t(n_decode + 1) - t(1)) / n_decode,
    per repeat, so generate's own per-call overhead is charged to prefill, as it is in use.
    """
    import tempfile

    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="gamma-rt-decoder-") as scratch:
        llm = decoder_model(checkpoint, scratch)
    embeds = torch.from_numpy(embeddings)[None]

    def generate(n: int):
        with torch.inference_mode():
            return llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                                max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    prefill = measure(lambda: generate(1), repeat, warmup)
    long = measure(lambda: generate(n_decode + 1), repeat, warmup=0)
    per_token = [max(0.0, (t - p) / n_decode) for t, p in zip(long.samples, prefill.samples)]
    return {"prefill_ms": prefill, "decode_ms_per_token": summarize(per_token)}


def llama_bench_figures(gguf: str | Path, n_prompt: int, n_decode: int, threads: int, repeat: int,
                        n_gpu_layers: int = 0) -> dict:
    """llama-bench's pp/tg ms per token, or why there are none (no native build here)."""
    from gamma_rt.errors import GammaError

    from .llama_bench import run_llama_bench

    try:
        records = run_llama_bench(gguf, n_prompt=n_prompt, n_gen=n_decode, repetitions=repeat, threads=threads,
                                   n_gpu_layers=n_gpu_layers)
    except GammaError as e:
        return {"absent": str(e)}
    return {f"{r.kind}_ms_per_token": r.ms_per_token for r in records}

