"""GaMMA: gamma-rt's own checkpoint format (two Whisper experts, fusion, projector, Qwen3), and a plain
Qwen3 folder as its decoder. family.py declares both to the exporters."""

from .family import Gamma, Qwen3Decoder

__all__ = ["Gamma", "Qwen3Decoder"]
