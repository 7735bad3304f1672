"""MuFun (github laitselec/MuFun, "Advancing the Foundation Model for Music Understanding") from its published
Hugging Face folder: a TinyLLaVA-Factory ``TinyLlavaForConditionalGeneration`` with a Whisper-large-v3 audio
tower, the ``blp_4i_2x`` connector and a Qwen3 decoder. What was read in MuFun's code and what was inferred
is in NOTES.md beside this file.

    family.py         the folder (config.json, weights, tokenizer), its key map and the manifest sections
    graphs.py         the two audio graphs to trace: encoder (layers 0/7/15/32, pool 5), projector
    prompt.py         the ``qwen2_instruct`` conversation as a chat template, ``<audio>`` a sentinel
    reference.py      the PyTorch oracle from transformers' WhisperEncoder and Qwen3ForCausalLM
    random_folder.py  ``gamma-rt init --family mufun``: a random folder in the published layout
"""

from .family import MuFun

__all__ = ["MuFun"]
