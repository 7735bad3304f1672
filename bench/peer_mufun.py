"""Peer check: MuFun's own code (github laitselec/MuFun, its ``tinyllava`` package) against gamma-rt's oracle
(export/families/mufun/reference.py) and gamma-rt's bundle, on a tiny random MuFun folder.

    git clone https://github.com/laitselec/MuFun /tmp/MuFun   # or any checkout holding tinyllava/
    python -m gamma_rt.bench.peer_mufun --mufun /tmp/MuFun --out bench/results/peer_mufun.json

What runs is MuFun's code itself: ``TinyLlavaConfig`` and ``TinyLlavaForConditionalGeneration`` built from the
folder's config.json, the folder's safetensors loaded into that module tree with ``strict=True``, MuFun's
``load_audio`` + ``ImagePreprocess`` (chunking, mel), its ``qwen2_instruct`` template (RL mode, the
inference prompt), ``encode_images`` and ``generate``. What is replaced, none of it arithmetic:

- ``liger_kernel.apply_liger_kernel_to_qwen3``: a no-op (Triton kernels for speed; not installable here);
- ``tinyllava.utils.train_utils``: an empty module (LoRA/DeepSpeed training helpers; peft and deepspeed are
  not installed);
- hub downloads: ``openai/whisper-large-v3`` (the tower's module, then overwritten by the folder's weights,
  and its processor: a WhisperFeatureExtractor with 128 bins) and ``Qwen/Qwen3-8B-Base`` (config and
  tokenizer: the folder's own, through local paths in ``llm_model_name_or_path``/``tokenizer_name_or_path``);
- ``ffmpeg_read`` (no ffmpeg binary here): soundfile decoding the 16 kHz mono float WAV it is given, so
  torchaudio's resampler (not installed) is never called.

Compared, as max|a - b| / max|b| per chunk and token for token: MuFun's prompt ids vs the oracle's and the
GGUF's, MuFun's chunk embeddings vs the oracle's and the bundle's, and the 24-token greedy answers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

from gamma_rt.errors import GammaError

QUESTION = "What genre is this song? Describe the tempo."
ANSWER_TOKENS = 24
SONGS = {"stereo_70s_44k1": (70.0, 44100, 2), "mono_95s_22k05_noisy": (95.0, 22050, 1)}
# The parts of MuFun's registries its released models use; the other connectors, towers and LLMs are not
# imported (several need packages or transformers 4 names absent here).
USED = {"connector": ("base", "blp"), "vision_tower": ("base", "whisper"), "llm": ("qwen3",)}
REPLACED = ["tinyllava/model/{connector,vision_tower,llm}: files other than USED's, as empty modules",
            "torchaudio.functional.resample (raises if called: the WAV is 16 kHz already)",
            "liger_kernel.transformers.apply_liger_kernel_to_qwen3 (no-op)",
            "tinyllava.utils.train_utils (empty: training helpers)",
            "WhisperForConditionalGeneration.from_pretrained('openai/whisper-large-v3') -> the folder's "
            "vision_config, weights loaded after",
            "AutoProcessor.from_pretrained('openai/whisper-large-v3') -> WhisperFeatureExtractor(feature_size=128)",
            "template Formatter classes given object.__hash__ (Python 3.11 refuses the unhashable dataclass "
            "defaults MuFun's Python 3.10 code uses)",
            "TinyLlavaForConditionalGeneration.tie_weights takes transformers 5's keyword arguments",
            "ffmpeg_read -> soundfile (16 kHz mono float WAV; no resampling)",
            "Qwen/Qwen3-8B-Base config/tokenizer -> the folder's, via local paths"]


def import_mufun(source: Path):
    """MuFun's ``tinyllava`` modules, with the stand-ins of REPLACED."""
    import soundfile as sf
    import transformers

    if not (source / "tinyllava" / "model" / "modeling_tinyllava.py").is_file():
        raise GammaError(f"{source}: not a MuFun checkout (no tinyllava/model/modeling_tinyllava.py)")
    liger = types.ModuleType("liger_kernel")
    liger.transformers = types.ModuleType("liger_kernel.transformers")
    liger.transformers.apply_liger_kernel_to_qwen3 = lambda *a, **k: None
    train_utils = types.ModuleType("tinyllava.utils.train_utils")
    def unused(*args, **kwargs):
        raise GammaError("a stand-in was called: this MuFun path is not the one the peer check runs")

    audio = types.ModuleType("torchaudio")
    audio.functional = types.ModuleType("torchaudio.functional")
    audio.functional.resample = unused
    sys.modules.update({"liger_kernel": liger, "liger_kernel.transformers": liger.transformers,
                        "tinyllava.utils.train_utils": train_utils, "torchaudio": audio, 
                        "torchaudio.functional": audio.functional})
    for kind, used in USED.items():  # MuFun's factories import every file of these folders
        for path in (source / "tinyllava" / "model" / kind).glob("*.py"):
            if not path.name.startswith("_") and path.stem not in used:
                sys.modules[f"tinyllava.model.{kind}.{path.stem}"] = types.ModuleType(path.stem)
    sys.path.insert(0, str(source))
    _hashable_formatters(source)
    import tinyllava.data.image_preprocess as preprocess
    import tinyllava.data.template as template
    import tinyllava.model as model
    import tinyllava.model.vision_tower.whisper as whisper

    def ffmpeg_read(data: bytes, rate: int) -> np.ndarray:
        import io

        samples, file_rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        if file_rate != rate:
            raise GammaError(f"peer WAV at {file_rate} Hz, MuFun asked {rate}")
        return samples.mean(axis=1)

    preprocess.ffmpeg_read = ffmpeg_read

    class LocalWhisper:
        config = None

        @classmethod
        def from_pretrained(cls, name):
            return transformers.WhisperForConditionalGeneration(cls.config)

    class LocalProcessor:
        @staticmethod
        def from_pretrained(name):
            return transformers.WhisperFeatureExtractor(feature_size=LocalWhisper.config.num_mel_bins)

    # transformers 5 calls tie_weights(recompute_mapping=...); MuFun's (written for 4.51) takes no arguments
    model.TinyLlavaForConditionalGeneration.tie_weights = lambda self, **kw: self.language_model.tie_weights(**kw)
    whisper.WhisperForConditionalGeneration = LocalWhisper
    whisper.AutoProcessor = LocalProcessor
    return types.SimpleNamespace(model=model, template=template, preprocess=preprocess, whisper=LocalWhisper)


def _hashable_formatters(source: Path) -> None:
    """MuFun's templates are dataclasses whose defaults are Formatter instances: Python 3.10 (MuFun's) takes
    them, 3.11 refuses unhashable defaults. Formatter's module is loaded first and given object's hash."""
    import importlib.util

    name = "tinyllava.data.template.formatter"
    spec = importlib.util.spec_from_file_location(name, source / "tinyllava/data/template/formatter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for cls in (module.Formatter, module.EmptyFormatter, module.StringFormatter):
        cls.__hash__ = object.__hash__
    sys.modules[name] = module


def mufun_model(mufun, folder: Path, work: Path):
    """TinyLlavaForConditionalGeneration from the folder's config.json, its weights loaded strictly."""
    import torch
    from safetensors.torch import load_file
    from transformers import WhisperConfig

    config = json.loads((folder / "config.json").read_text())
    text, vision = config.pop("text_config"), config.pop("vision_config")
    for name, sub in (("qwen3", text), ("whisper", vision), ("tokenizer", None)):
        (work / name).mkdir(parents=True, exist_ok=True)
        if sub is not None:
            (work / name / "config.json").write_text(json.dumps(sub))
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (work / "tokenizer" / f).write_bytes((folder / f).read_bytes())
    mufun.whisper.config = WhisperConfig.from_dict(vision)
    for key in ("architectures", "auto_map", "model_type", "transformers_version", "torch_dtype"):
        config.pop(key, None)
    config.update(llm_model_name_or_path=str(work / "qwen3"), vision_model_name_or_path=str(work / "whisper"),
                  tokenizer_name_or_path=str(work / "tokenizer"))
    cfg = mufun.model.TinyLlavaConfig(text_config=text, vision_config=vision, **config)
    cfg.text_config._attn_implementation = "eager"
    net = mufun.model.TinyLlavaForConditionalGeneration(cfg)
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(f))
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return net.float().eval(), torch


def compare(mufun, net, torch, reference, pipe, wav: Path) -> dict:
    from gamma_rt.export.families.mufun.reference import IMAGE_TOKEN_INDEX, mufun_prompt

    images, sizes = mufun.preprocess.load_audio(
        mufun.preprocess.ImagePreprocess(net.vision_tower._image_processor,
                                         types.SimpleNamespace(image_aspect_ratio="audio")), str(wav))
    images = torch.cat(images)
    conversation = [{"from": "human", "value": "<audio>\n" + QUESTION}, {"from": "gpt", "value": ""}]
    encoded = mufun.template.TemplateFactory("qwen2_instruct")().encode(conversation, net.tokenizer, mode="rl")
    ids = encoded["input_ids"].tolist()
    with torch.no_grad():
        theirs = net.encode_images(images)
        stops = reference.stop_ids
        out = net.generate(inputs=encoded["input_ids"][None], images=images, image_sizes=[sizes],
                           max_new_tokens=ANSWER_TOKENS, do_sample=False, eos_token_id=stops, pad_token_id=stops[-1])
    answer = out[0].tolist()
    answer = answer[:next((i for i, t in enumerate(answer) if t in stops), len(answer))]
    samples = mufun.preprocess.ffmpeg_read(wav.read_bytes(), 16000)
    ours = reference.encode(torch.cat([reference.features(c) for c in _chunks(samples)]))
    bundle = [w.embeddings for w in pipe.embed(samples)]
    gguf_ids = pipe.tokens(pipe.prompt.head()) + [IMAGE_TOKEN_INDEX] + pipe.tokens(pipe.prompt.tail(QUESTION))
    from gamma_rt.runtime import Sampling

    runtime_answer = pipe.ask(samples, QUESTION, Sampling(), ANSWER_TOKENS)[0].tokens
    rel = lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())  # noqa: E731
    return {
        "chunks": sizes[0],
        "mufun_prompt": encoded["prompt"],
        "prompt_ids_equal": {"oracle": reference.input_ids(mufun_prompt(QUESTION)) == ids, "gguf": gguf_ids == ids},
        "embeddings_rel_oracle_vs_mufun": [rel(ours[i], theirs[i]) for i in range(len(theirs))],
        "embeddings_rel_bundle_vs_mufun": [rel(bundle[i], theirs[i].numpy()) for i in range(len(theirs))],
        "window_tokens": {"mufun": [int(t.shape[0]) for t in theirs], "bundle": [len(b) for b in bundle]},
        "answer_mufun": answer,
        "answer_equal": {"oracle": reference.answer(samples, QUESTION, ANSWER_TOKENS) == answer,
                         "bundle": runtime_answer == answer},
    }


def _chunks(samples):
    from gamma_rt.export.families.mufun.reference import chunks

    return chunks(samples)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mufun", type=Path, required=True, help="a checkout of github laitselec/MuFun")
    p.add_argument("--out", type=Path, required=True, help="JSON to write")
    p.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    args = p.parse_args(argv)
    import soundfile as sf

    from gamma_rt.export.families import family_named
    from gamma_rt.export.families.mufun.reference import MuFunReference
    from gamma_rt.export.gguf_export import export_gguf
    from gamma_rt.export.onnx_export import export_onnx
    from gamma_rt.hashing import sha256_file
    from gamma_rt.machine import describe
    from gamma_rt.runtime import Pipeline
    from gamma_rt.runtime.audio import load_audio
    from gamma_rt.synth import Music, write

    from .entry import write_json

    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        folder = family_named("mufun").init("tiny", work / "mufun", seed=0)
        export_onnx(folder, work / "bundle", precision="fp32")
        export_gguf(folder, work / "bundle", "f32", progress=lambda items, **_: items)
        mufun = import_mufun(args.mufun)
        net, torch = mufun_model(mufun, folder, work / "local")
        reference = MuFunReference(folder)
        songs = {}
        with Pipeline.open(work / "bundle", threads=1) as pipe:
            for name, (seconds, rate, channels) in SONGS.items():
                source = write(work / f"{name}.flac", Music(seconds, rate=rate, channels=channels, seed=3))
                samples = load_audio(source, 16000)
                if name.endswith("noisy"):
                    samples = np.clip(samples + np.random.default_rng(5).normal(0, 0.05, samples.shape), -1, 1)
                wav = work / f"{name}.wav"
                sf.write(wav, samples.astype(np.float32), 16000, subtype="FLOAT")
                songs[name] = compare(mufun, net, torch, reference, pipe, wav)
                print(name, json.dumps({k: v for k, v in songs[name].items() if k != "mufun_prompt"}))
    used = ["model/modeling_tinyllava.py", "model/configuration_tinyllava.py", "model/vision_tower/whisper.py",
            "model/connector/blp.py", "model/llm/qwen3.py", "data/image_preprocess.py",
            "data/template/base.py", "data/template/qwen2_instruct_template.py"]
    sources = {f: sha256_file(args.mufun / "tinyllava" / f) for f in used}
    result = {"machine": describe(threads=1), "mufun_source": "github laitselec/MuFun (tinyllava/)",
              "mufun_files_sha256": sources,
              "replaced": REPLACED, "question": QUESTION, "answer_tokens": ANSWER_TOKENS,
              "folder": "gamma-rt init --family mufun --preset tiny --seed 0", "songs": songs}
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
