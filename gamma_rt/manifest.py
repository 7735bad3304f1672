"""``BUNDLE/manifest.json``: the only contract between stages.

Export writes it, quant adds variants to it, the runtime reads nothing else to know a bundle. Every
check that fails names the file and the field. Pure Python + stdlib: the runtime imports this.

Layout::

    {
      "schema_version": 1,
      "created_by": "gamma-rt 0.1.0",
      "source": {"checkpoint_sha256": "...", "preset": "tiny", "family": "gamma"},
      "tools": {"torch": "...", "onnx": "...", ...},
      "audio": {"sample_rate": 16000, "n_fft": 400, "hop_length": 160, "n_mels": 128, "window_seconds": 30,
                "window_frames": 3000, "encoder_tokens_per_window": 1500, "tokens_per_window": 750,
                "pool_stride": 2},
      "prompt": {... PromptConfig fields ...},
      "llm": {"n_embd": 64, "n_vocab": 1024, ...},
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
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from gamma_rt.errors import BundleError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
AUDIO_COMPONENTS = ("temporal_encoder", "global_encoder", "fusion", "projector")
# A cache of verified hashes keyed by (size, mtime), so a 16 GB bundle is hashed once, not at every load.
HASH_CACHE_NAME = ".verified.json"


@dataclass
class TensorSpec:
    """One graph input or output. ``shape`` entries are ints or symbolic names (``"batch"``)."""

    name: str
    shape: list
    dtype: str


@dataclass
class Component:
    kind: str  # "onnx" | "gguf" | "engine"
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
    audio: dict
    prompt: dict
    llm: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    tools: dict = field(default_factory=dict)
    components: dict[str, Component] = field(default_factory=dict)
    engines: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    created_by: str = ""

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
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{path}: not valid JSON ({e})") from None
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
        for required in ("audio", "prompt", "components"):
            if not isinstance(data.get(required), dict):
                raise BundleError(f"{path}: field '{required}' missing or not an object")
        comps = {
            name: Component.from_dict(c, f"{path}: components.{name}") for name, c in data["components"].items()
        }
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise BundleError(f"{path}: unknown field(s) {', '.join(sorted(unknown))}")
        return cls(**{**data, "components": comps})

    @classmethod
    def load(cls, bundle: str | Path, verify: bool = True) -> "Manifest":
        m = cls.read(bundle)
        if verify:
            m.verify(bundle)
        return m

    def verify(self, bundle: str | Path, names: list[str] | None = None) -> None:
        """Every component file exists and matches its recorded size and sha256; widths agree."""
        bundle = Path(bundle)
        cache = _HashCache(bundle)
        for name in names or list(self.components):
            c = self.components[name]
            for rel in [c.file, *c.external_data]:
                path = bundle / rel
                if not path.is_file():
                    raise BundleError(f"{path}: missing (components.{name}.file in {bundle / MANIFEST_NAME})")
            path = bundle / c.file
            size = path.stat().st_size
            if size != c.bytes:
                raise BundleError(
                    f"{path}: {size} bytes, manifest field components.{name}.bytes says {c.bytes} "
                    "(truncated or replaced file)"
                )
            digest = cache.sha256(path)
            if digest != c.sha256:
                raise BundleError(
                    f"{path}: sha256 {digest[:12]}... does not match components.{name}.sha256 {c.sha256[:12]}..."
                )
            # Weights in external data files (ONNX graphs past 2 GiB) are hashed too, when recorded.
            for rel, expected in c.extra.get("external_data_sha256", {}).items():
                if cache.sha256(bundle / rel) != expected:
                    raise BundleError(
                        f"{bundle / rel}: sha256 does not match components.{name}.extra.external_data_sha256"
                    )
        cache.save()
        self.check_widths(bundle)

    def check_widths(self, bundle: str | Path = ".") -> None:
        """The projector's output width must equal the decoder's n_embd."""
        proj = self.components.get("projector")
        width = proj.outputs[0].shape[-1] if proj and proj.outputs else None
        for name, c in self.components.items():
            if c.kind == "gguf" and width is not None:
                n_embd = c.extra.get("n_embd")
                if n_embd != width:
                    raise BundleError(
                        f"{Path(bundle) / MANIFEST_NAME}: components.{name}.extra.n_embd is {n_embd} but the "
                        f"projector outputs {width}-wide embeddings; the GGUF and the audio graphs come from "
                        "different models"
                    )

    def component(self, name: str) -> Component:
        if name not in self.components:
            have = ", ".join(sorted(self.components)) or "none"
            raise BundleError(f"bundle has no component {name!r} (has: {have})")
        return self.components[name]

    # --- writing -------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

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


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


class _HashCache:
    def __init__(self, bundle: Path):
        self.path = bundle / HASH_CACHE_NAME
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.dirty = False

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key = f"{path.name}:{st.st_size}:{st.st_mtime_ns}"
        if key not in self.entries:
            self.entries[key] = sha256_file(path)
            self.dirty = True
        return self.entries[key]

    def save(self) -> None:
        if self.dirty:
            try:
                self.path.write_text(json.dumps(self.entries))
            except OSError:
                pass  # a read-only bundle still loads; it is hashed again next time
