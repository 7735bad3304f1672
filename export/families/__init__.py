"""The model families gamma-rt exports: one folder each, everything a family knows inside it.

A newcomer's guide: where each kind of model fact goes
-------------------------------------------------------

Adding a family is one new folder, ``export/families/<family>/``, whose ``__init__.py`` imports the module
holding its ``@register``-ed class. The registry (registry.py) imports every subpackage of this folder on
first use, so nothing else is edited to register it. Inside the folder:

=============================================  =============================================================
fact                                           where
=============================================  =============================================================
which config.json it reads                     the class: ``architectures`` / ``model_types`` (``matches``)
reading the folder, refusing what differs      the class's ``__init__`` and ``check``, with folder.py's
                                               readers (config, shards, tokenizer, chat template,
                                               processor); errors name the file and the field
key map (stored name -> ours)                  a table in the family's module, read with
                                               ``folder.strip_prefixes``
decoder hyperparameters                        ``folder.decoder_shape`` -> gamma_rt/decoder_shape.py's
                                               ``DecoderShape`` (the only decoder-shape type)
the audio graphs (ONNX) and their I/O          ``graphs()``: one ``GraphSpec`` per graph, torch modules in
                                               the family's own ``graphs.py``
how the graphs connect                         ``manifest_sections()["audio"]["chain"]`` (``chain_step``,
                                               read by gamma_rt/audio_chain.py); the exporters, TensorRT
                                               builders, trt_backend and bench walk the chain and know
                                               no family. Steps that read no value of each other run
                                               side by side on TensorRT (one CUDA stream each)
graph scopes that must stay float32            ``GraphSpec.fp32_scopes`` (kept in fp16 ONNX graphs and in
                                               TensorRT's cast plain graphs)
front end and windowing                        ``manifest_sections()["audio"]``: sample rate, n_fft, hop,
                                               mel bins, window seconds and frames, max_seconds
how many tokens a window keeps                 ``audio.token_count``: ``{"rule": name, ...}``, a rule of
                                               gamma_rt/token_count.py (add one there with ``@rule``)
prompt format                                  ``manifest_sections()["prompt"]``: chat template,
                                               placeholder, start/end tokens, stop strings
the decoder for GGUF                           ``decoder()``: a ``DecoderSpec`` (arch, shape, tensor
                                               locations, tokenizer folder, template)
PyTorch reference (the oracle for tests)       a ``reference.py`` in the folder, built from transformers'
                                               own classes where they exist
random folder for ``gamma-rt init``            ``presets`` and ``init()`` (``init_options``: its own
                                               flags); write tensors with export/weights.py (sharded
                                               safetensors, seeded random tensors), one at a time for
                                               big presets; a Qwen-style tokenizer with export/bpe.py
=============================================  =============================================================

Generic code never names a family: if an exporter, builder or runtime module needs to know which family it
serves, the fact belongs in the manifest instead.
"""

from __future__ import annotations

from .base import DecoderSpec, Family, GraphSpec
from .registry import FAMILIES, claimant, detect, discover, family_named, known, register, writable

__all__ = ["DecoderSpec", "FAMILIES", "Family", "GraphSpec", "claimant", "detect", "discover", "family_named",
           "known", "register", "writable"]
