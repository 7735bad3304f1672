"""``BUNDLE/manifest.json``: the only contract between stages.

Export writes it, quant adds variants to it, the runtime reads nothing else to know a bundle. Every
check that fails names the file and the field. Pure Python + stdlib: the runtime imports this.

Layout::

    {
      "schema_version": 2,
      "created_by": "gamma-rt 0.1.0",
      "source": {"checkpoint_sha256": "...", "preset": "tiny", "family": "gamma"},
      "tools": {"torch": "...", "onnx": "...", ...},
      "audio": {"sample_rate": 16000, "n_fft": 400, "hop_length": 160, "n_mels": 128, "window_seconds": 30,
                "window_frames": 3000, "tokens_per_window": 750, "max_seconds": null,
                "token_count": {"rule": "proportional"},
                "chain": [{"component": "temporal_encoder", "inputs": {"mel": "mel"}, "outputs": {"hidden": "temporal"}},
                          ..., {"component": "projector", "inputs": {"fused": "fused"},
                                "outputs": {"embeddings": "embeddings"}}]},
      "prompt": {... PromptConfig fields, or "chat_template" + "audio_placeholder" ...},
      "llm": {"arch": "qwen3", "n_embd": 64, "n_vocab": 1024, "n_layer": 2},
      "components": {
        "temporal_encoder": {"kind": "onnx", "file": "temporal_encoder.onnx", "sha256": "...", "bytes": 123,
                              "external_data": [], "precision": "fp32", "opset": 17,
                              "inputs": [{"name": "mel", "shape": ["batch", 128, 3000], "dtype": "float32"}],
                              "outputs": [...], "extra": {}},
        "global_encoder": ..., "fusion": ..., "projector": ...,
        "decoder": {"kind": "gguf", "file": "decoder-f32.gguf", ..., "extra": {"n_embd": 64, "n_vocab": 1024}}
      },
      "engines": {}
    }
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from gamma_rt.audio_chain import EMBEDDINGS, SCHEMA_1_CHAIN, check_chain, read_chain
from gamma_rt.errors import BundleError
from gamma_rt.hashing import VerifiedHashes, sha256_file
from gamma_rt.manifest_fields import AUDIO, LLM, check_fields, check_section, read_manifest
from gamma_rt.token_count import TokenRule

# 2: ``audio.chain`` says how the audio graphs connect, ``audio.token_count`` how many tokens a partial
# window keeps, ``prompt`` may hold the checkpoint's own chat template. Version 1 bundles (GaMMA only)
# still load: their chain is audio_chain.SCHEMA_1_CHAIN.
SCHEMA_VERSION = 2
MANIFEST_NAME = "manifest.json"
# audio.front_end: Whisper's log-mel (runtime/mel.py) or Kaldi's fbank, AudioSet-normalized (runtime/fbank.py)
FRONT_ENDS = ("whisper_mel", "kaldi_fbank")
MAX_WINDOW_SAMPLES = 2**24  # samples per window: 17 min at 16 kHz
MAX_SPECTRUM = 2**24  # frames (or mel bins) x FFT bins per window


@dataclass
class AudioSection:
    """The manifest's ``audio`` object: the front end, the windowing and the audio graph chain.

    sample_rate Hz; n_fft, hop_length samples; window_seconds s; window_frames mel frames per window;
    tokens_per_window LLM tokens of a full window; max_seconds: audio past it is cut (None: no limit);
    token_count: how many of a window's tokens the decoder gets (a rule of gamma_rt/token_count.py, written
    as ``{"rule": name, ...params}``; a plain name, as older bundles wrote it, reads too).
    front_end: ``whisper_mel`` or ``kaldi_fbank`` (n_fft is then Kaldi's frame length, window_frames the
    frames it pads or cuts to; front_end_options its normalization ``mean`` and ``std``).
    ``recorded`` holds the other fields an exporter wrote (kept, never read by the runtime)."""

    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 128
    window_seconds: float = 30
    window_frames: int = 3000
    tokens_per_window: int = 750
    max_seconds: float | None = None
    token_count: TokenRule = field(default_factory=TokenRule)
    front_end: str = "whisper_mel"
    front_end_options: dict = field(default_factory=dict)  # kaldi_fbank: {"mean": ..., "std": ...}
    chain: tuple = SCHEMA_1_CHAIN
    recorded: dict = field(default_factory=dict)

    @property
    def components(self) -> tuple[str, ...]:
        """The audio graphs in the order they run."""
        return tuple(step.component for step in self.chain)

    @property
    def window_samples(self) -> int:
        return int(round(self.window_seconds * self.sample_rate))

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "AudioSection":
        check_section(AUDIO, d, "audio", where)
        names = {f.name for f in dataclasses.fields(cls)} - {"recorded", "chain"}
        known = {k: d[k] for k in names if k in d}
        if "token_count" in known:
            known["token_count"] = TokenRule.read(known["token_count"], where)
        try:
            section = cls(**known, chain=read_chain(d.get("chain"), where),
                          recorded={k: v for k, v in d.items() if k not in names and k != "chain"})
        except TypeError as e:
            raise BundleError(f"{where}: field audio malformed ({e})") from None
        section.check(where)
        return section

    def check(self, where: str) -> None:
        """The rules between fields; each field's type and range is manifest_fields.AUDIO's."""
        # bounds on the front end's work per window (Whisper's: 480,000 samples, 3000 x 201 spectrum bins)
        if self.window_samples > MAX_WINDOW_SAMPLES:
            raise BundleError(f"{where}: field audio.window_seconds is {self.window_seconds:g}: a window of "
                              f"{self.window_samples} samples at {self.sample_rate} Hz is more than "
                              f"{MAX_WINDOW_SAMPLES}")
        for what, size in (("window_frames", self.window_frames), ("n_mels", self.n_mels)):
            if size * (self.n_fft // 2 + 1) > MAX_SPECTRUM:
                raise BundleError(f"{where}: field audio.{what} is {size}: {size} x {self.n_fft // 2 + 1} "
                                  f"spectrum bins (audio.n_fft {self.n_fft}) is more than {MAX_SPECTRUM}")
        self.token_count = TokenRule.read(self.token_count, where)
        if self.front_end not in FRONT_ENDS:
            raise BundleError(f"{where}: field audio.front_end is {self.front_end!r}; this gamma-rt knows "
                              f"{', '.join(FRONT_ENDS)}")
        if not isinstance(self.front_end_options, dict):
            raise BundleError(f"{where}: field audio.front_end_options must be an object")
        if self.window_samples // self.hop_length != self.window_frames:
            raise BundleError(f"{where}: field audio.window_frames is {self.window_frames} but a "
                              f"{self.window_seconds} s window at {self.sample_rate} Hz, hop {self.hop_length}, "
                              f"has {self.window_samples // self.hop_length} frames")
        check_chain(self.chain, where)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("recorded", "chain")}
        d["token_count"] = self.token_count.to_manifest()
        d["chain"] = [dataclasses.asdict(step) for step in self.chain]
        return {**self.recorded, **d}


@dataclass
class LLMSection:
    """The manifest's ``llm`` object: what the audio side must fit. ``arch``: llama.cpp's architecture name."""

    n_embd: int = 0
    n_vocab: int = 0
    n_layer: int = 0
    arch: str = "qwen3"
    recorded: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "LLMSection":
        check_section(LLM, d, "llm", where)
        names = {f.name for f in dataclasses.fields(cls)} - {"recorded"}
        section = cls(**{k: d[k] for k in names if k in d}, recorded={k: v for k, v in d.items() if k not in names})
        return section

    def to_dict(self) -> dict:
        return {**self.recorded, "n_embd": self.n_embd, "n_vocab": self.n_vocab, "n_layer": self.n_layer,
                "arch": self.arch}


def bundle_file(bundle: str | Path, rel: str, field_name: str) -> Path:
    """``bundle / rel`` for a file the manifest names, refused unless it is a plain relative name that stays
    inside the bundle: a bundle is untrusted input, and ``../outside.onnx`` or a symlink out must not load."""
    bundle = Path(bundle)
    where = bundle / MANIFEST_NAME
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"{where}: field {field_name} must be a file name, got {rel!r}")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or rel.startswith(("/", "\\")) or "\\" in rel or ":" in pure.parts[0] or ".." in pure.parts:
        raise BundleError(f"{where}: field {field_name} is {rel!r}; a file entry must be a plain relative name "
                          "inside the bundle (no absolute path, no '..')")
    path = bundle / rel
    root = bundle.resolve()
    if path.exists() or path.is_symlink():
        real = path.resolve()
        if real != root and root not in real.parents:
            raise BundleError(f"{where}: field {field_name} is {rel!r}, a link that leaves the bundle (to {real})")
    return path


@dataclass
class TensorSpec:
    """One graph input or output. ``shape`` entries are ints or symbolic names (``"batch"``)."""

    name: str
    shape: list
    dtype: str


@dataclass
class Component:
    kind: str  # "onnx" | "gguf" | "gguf_lora" | "engine"
    file: str
    sha256: str
    bytes: int
    precision: str
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    opset: int | None = None
    external_data: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "Component":
        try:
            d = dict(d)
            d["inputs"] = [TensorSpec(**t) for t in d.get("inputs", [])]
            d["outputs"] = [TensorSpec(**t) for t in d.get("outputs", [])]
            return cls(**d)
        except TypeError as e:
            raise BundleError(f"{where}: malformed component ({e})") from None


@dataclass
class Manifest:
    audio: AudioSection
    prompt: dict
    llm: LLMSection = field(default_factory=LLMSection)
    source: dict = field(default_factory=dict)
    tools: dict = field(default_factory=dict)
    components: dict[str, Component] = field(default_factory=dict)
    engines: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    created_by: str = ""

    def __post_init__(self):
        # Exporters build the sections as plain dicts; they are typed here, in one place.
        if isinstance(self.audio, dict):
            self.audio = AudioSection.from_dict(self.audio, MANIFEST_NAME)
        if isinstance(self.llm, dict):
            self.llm = LLMSection.from_dict(self.llm, MANIFEST_NAME)

    # --- reading -------------------------------------------------------------------------------

    @classmethod
    def read(cls, bundle: str | Path) -> "Manifest":
        """Parse and check the manifest's structure (no file hashing; see :meth:`verify`)."""
        bundle = Path(bundle)
        path = bundle / MANIFEST_NAME
        if not bundle.is_dir():
            raise BundleError(f"{bundle}: bundle folder not found")
        if not path.is_file():
            raise BundleError(f"{path}: no manifest.json; is this a gamma-rt bundle?")
        data = read_manifest(path)
        if not isinstance(data, dict):
            raise BundleError(f"{path}: expected a JSON object")
        version = data.get("schema_version")
        if not isinstance(version, int):
            raise BundleError(f"{path}: field 'schema_version' missing or not an integer")
        if version > SCHEMA_VERSION:
            raise BundleError(
                f"{path}: field 'schema_version' is {version}, newer than this gamma-rt reads ({SCHEMA_VERSION}); "
                "upgrade gamma-rt or re-export the bundle"
            )
        check_fields(data, str(path))
        comps = {
            name: Component.from_dict(c, f"{path}: components.{name}") for name, c in data["components"].items()
        }
        for name, c in comps.items():
            for i, rel in enumerate([c.file, *c.external_data]):
                bundle_file(bundle, rel, f"components.{name}.{'file' if i == 0 else 'external_data'}")
        audio = AudioSection.from_dict(data["audio"], str(path))
        llm = LLMSection.from_dict(data.get("llm", {}), str(path))
        return cls(**{**data, "components": comps, "audio": audio, "llm": llm})

    @classmethod
    def load(cls, bundle: str | Path, verify: bool = True) -> "Manifest":
        m = cls.read(bundle)
        if verify:
            m.verify(bundle)
        return m

    def verify(self, bundle: str | Path, names: list[str] | None = None) -> None:
        """Every component file exists and matches its recorded size and sha256; widths agree."""
        bundle = Path(bundle)
        cache = VerifiedHashes()  # kept outside the bundle, which could forge it
        for name in names or list(self.components):
            c = self.components[name]
            for rel in [c.file, *c.external_data]:
                path = bundle_file(bundle, rel, f"components.{name}.file")
                if not path.is_file():
                    raise BundleError(f"{path}: missing (components.{name}.file in {bundle / MANIFEST_NAME})")
            path = bundle_file(bundle, c.file, f"components.{name}.file")
            size = path.stat().st_size
            if size != c.bytes:
                raise BundleError(
                    f"{path}: {size} bytes, manifest field components.{name}.bytes says {c.bytes} "
                    "(truncated or replaced file)"
                )
            digest = cache.sha256(path, c.sha256)
            if digest != c.sha256:
                raise BundleError(
                    f"{path}: sha256 {digest[:12]}... does not match components.{name}.sha256 {c.sha256[:12]}..."
                )
            # Weights in external data files (ONNX graphs past 2 GiB) are hashed too, when recorded.
            for rel, expected in c.extra.get("external_data_sha256", {}).items():
                data_file = bundle_file(bundle, rel, f"components.{name}.extra.external_data_sha256")
                if cache.sha256(data_file, expected) != expected:
                    raise BundleError(
                        f"{bundle / rel}: sha256 does not match components.{name}.extra.external_data_sha256"
                    )
        cache.save()
        self.check_widths(bundle)

    def check_widths(self, bundle: str | Path = ".") -> None:
        """The audio chain's embeddings must be as wide as the decoder's n_embd."""
        width = self.embedding_width()
        last = self.audio.chain[-1].component
        for name, c in self.components.items():
            if c.kind == "gguf" and width is not None:
                n_embd = c.extra.get("n_embd")
                if n_embd != width:
                    raise BundleError(
                        f"{Path(bundle) / MANIFEST_NAME}: components.{name}.extra.n_embd is {n_embd} but "
                        f"components.{last} outputs {width}-wide embeddings; the GGUF and the audio graphs come from "
                        "different models"
                    )

    def embedding_width(self) -> int | None:
        """Width of the ``embeddings`` the last audio graph outputs (any precision), None before export."""
        last = self.audio.chain[-1]
        graph_output = next((k for k, v in last.outputs.items() if v == EMBEDDINGS), None)
        for key in (last.component, *(k for k in self.components if k.startswith(last.component + "."))):
            c = self.components.get(key)
            index = next((i for i, o in enumerate(c.outputs) if o.name == graph_output), None) if c else None
            if index is not None:
                shape = c.outputs[index].shape
                width = shape[-1] if shape else None
                if not isinstance(width, int) or width < 1:
                    raise BundleError(f"{MANIFEST_NAME}: field components.{key}.outputs[{index}].shape is {shape}, "
                                      "which does not end in the embedding width")
                return width
        return None

    def path(self, bundle: str | Path, name: str) -> Path:
        """The file of component ``name``, checked to lie inside the bundle."""
        return bundle_file(bundle, self.component(name).file, f"components.{name}.file")

    def component(self, name: str) -> Component:
        if name not in self.components:
            have = ", ".join(sorted(self.components)) or "none"
            raise BundleError(f"bundle has no component {name!r} (has: {have})")
        return self.components[name]

    # --- writing -------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["audio"] = self.audio.to_dict()
        d["llm"] = self.llm.to_dict()
        return d

    def write(self, bundle: str | Path) -> Path:
        """Atomic write: a reader never sees half a manifest."""
        path = Path(bundle) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    def add_file(self, bundle: str | Path, name: str, component: Component) -> None:
        """Record ``component``; its sha256 and bytes are taken from the file on disk."""
        path = Path(bundle) / component.file
        component.bytes = path.stat().st_size
        component.sha256 = sha256_file(path)
        self.components[name] = component
