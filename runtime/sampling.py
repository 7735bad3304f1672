"""Sampling settings and the llama.cpp sampler chain built from them; stop-string handling for streamed text."""

from __future__ import annotations

from dataclasses import dataclass

import llama_cpp

from gamma_rt.errors import GammaError


@dataclass
class Sampling:
    """How the next token is chosen. ``temperature`` 0 is greedy (argmax); ``grammar`` is GBNF text."""

    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    seed: int = 0
    grammar: str | None = None


def sampler_chain(sampling: Sampling, vocab) -> "llama_cpp.llama_sampler_p":
    """A llama.cpp sampler chain; the caller frees it with ``llama_sampler_free``.

    Order as in llama.cpp's common sampler: grammar first (masks tokens the grammar forbids), then
    top-k, top-p, temperature, and the seeded draw (or argmax when greedy).
    """
    params = llama_cpp.llama_sampler_chain_default_params()
    chain = llama_cpp.llama_sampler_chain_init(params)
    if sampling.grammar is not None:
        grammar = llama_cpp.llama_sampler_init_grammar(vocab, sampling.grammar.encode(), b"root")
        if not grammar:
            llama_cpp.llama_sampler_free(chain)
            raise GammaError("sampling grammar: llama.cpp could not parse the GBNF grammar (rule 'root' needed)")
        llama_cpp.llama_sampler_chain_add(chain, grammar)
    if sampling.temperature <= 0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(sampling.top_k))
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(sampling.temperature))
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(sampling.seed & 0xFFFFFFFF))
    return chain


class StopFilter:
    """Holds back streamed text that might be the start of a stop string; stop strings never reach the output."""

    def __init__(self, stop: list[str] | tuple[str, ...]):
        self.stop = [s for s in stop if s]
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Text that is safe to emit now; sets ``stopped`` when a stop string has appeared."""
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            out, self.pending, self.stopped = self.pending[:cut], "", True
            return out
        hold = max((k for s in self.stop for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
