"""Peer comparison: llama.cpp's own converter and mtmd against gamma-rt and transformers, on tiny Audio
Flamingo 3 and Music Flamingo 2601 folders.

    JOBS=2 nice native/build.sh cpu
    python -m gamma_rt.bench.peer_mtmd --native native-build/cpu/bin --out bench/results/peer_mtmd_flamingo.json

For each family:

1. a tiny folder written by transformers' classes (``gamma-rt init --family F --preset tiny``), gamma-rt's
   bundle of it (fp32 ONNX + F32 GGUF) and a 70 s 16 kHz mono float WAV (three windows, the last 10 s);
2. ``convert_hf_to_gguf.py`` of the vendored llama.cpp (text model, then ``--mmproj``), first as shipped;
   where that fails on the tiny folder, again with the two workarounds of ``CONVERT_SHIM``;
3. mtmd's audio embeddings through libmtmd (mtmd_tokenize, mtmd_encode_chunk, mtmd_get_output_embd; in a
   child process on the native build's libraries) and its greedy answer from ``llama-mtmd-cli``;
4. the same from transformers (the processor's windows and masks, get_audio_features, generate) and from
   gamma-rt (Pipeline.embed, Pipeline.ask), compared window by window as max|a - b| / max|b|.

Two more transformers runs say where mtmd's numbers come from: the same encoder and projector on mtmd's
inputs (one log-mel over the whole file plus 30 s of zeros, cut into full 3000-frame chunks, no mask, no
RoTE), and transformers' generate on mtmd's prompt layout (its token ids and its embeddings).

The converter refuses MusicFlamingoForConditionalGeneration. RoTE has no weights, so a copy of the folder
relabelled AudioFlamingo3ForConditionalGeneration converts, and shows what mtmd does with a 2601 checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from gamma_rt.errors import GammaError

FAMILIES = ("audioflamingo3", "musicflamingo")
AF3_ARCH = "AudioFlamingo3ForConditionalGeneration"
QUESTION = "What genre is this song? Describe the tempo."
ANSWER_TOKENS = 24
SONG_SECONDS = 70.0
SAMPLE_RATE = 16000
MARKER = "<__media__>"  # mtmd_default_marker()

# Two limits of the stock converter that only tiny folders hit (the published checkpoints pass both):
# - it names the BPE pre-tokenizer by a hash of the ids a fixed text encodes to, so a 1024-token vocabulary
#   is "not recognized"; the tiny tokenizer is built with Qwen2's pre-tokenizer, so "qwen2" is the truth;
# - its tensor-name table has one entry per block index below the encoder's layer count, and it maps
#   audio_tower.conv{1,2} through that table, so a 2-layer encoder cannot name conv2.
CONVERT_SHIM = r"""
import runpy, sys
llama = sys.argv[1]
sys.path[:0] = [llama, llama + "/gguf-py"]
import gguf
import conversion.base as base
stock_map = gguf.get_tensor_name_map
gguf.get_tensor_name_map = lambda arch, n_blocks: stock_map(arch, max(n_blocks, 3))
stock_pre = base.TextModel.get_vocab_base_pre
def pre(self, tokenizer):
    try:
        return stock_pre(self, tokenizer)
    except NotImplementedError:
        return "qwen2"
base.TextModel.get_vocab_base_pre = pre
sys.argv = [llama + "/convert_hf_to_gguf.py", *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# Runs in the child, on the native build's libllama and libmtmd: every chunk mtmd makes of the prompt,
# text chunks as token ids and audio chunks as the encoder's output embeddings.
MTMD_CHILD = r"""
import ctypes, sys
import numpy as np, soundfile as sf
import llama_cpp, llama_cpp.mtmd_cpp as mtmd
text_gguf, mmproj, wav, prompt, out, flash_attn = sys.argv[1:7]
llama_cpp.llama_backend_init()
model = llama_cpp.llama_model_load_from_file(text_gguf.encode(), llama_cpp.llama_model_default_params())
params = mtmd.mtmd_context_params_default()
params.use_gpu, params.n_threads = False, 1
if flash_attn == "off":
    params.flash_attn_type = 0  # LLAMA_FLASH_ATTN_TYPE_DISABLED; "auto" (the CLI's default) enables it on CPU
ctx = mtmd.mtmd_init_from_file(mmproj.encode(), model, params)
samples = np.ascontiguousarray(sf.read(wav, dtype="float32")[0])
bitmap = mtmd.mtmd_bitmap_init_from_audio(len(samples), (ctypes.c_float * len(samples)).from_buffer(samples))
text = mtmd.mtmd_input_text(prompt.encode(), len(prompt.encode()), True, True)
chunks = mtmd.mtmd_input_chunks_init()
assert mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(text), (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap), 1) == 0
n_embd, parts = llama_cpp.llama_model_n_embd(model), {}
for i in range(mtmd.mtmd_input_chunks_size(chunks)):
    chunk = mtmd.mtmd_input_chunks_get(chunks, i)
    if mtmd.mtmd_input_chunk_get_type(chunk) == 0:
        n = ctypes.c_size_t()
        ids = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
        parts[f"{i:03d}_text"] = np.array([ids[j] for j in range(n.value)], np.int64)
    else:
        assert mtmd.mtmd_encode_chunk(ctx, chunk) == 0
        n = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
        parts[f"{i:03d}_audio"] = np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(ctx), shape=(n, n_embd)).copy()
np.savez(out, **parts)
"""


def llama_source(native_bin: Path) -> Path:
    """The vendored llama.cpp that ``native/build.sh`` built ``native_bin`` from."""
    found = sorted((native_bin.parent.parent / "sdist").glob("llama_cpp_python-*/vendor/llama.cpp"))
    if not found:
        raise GammaError(f"{native_bin}: no ../../sdist/llama_cpp_python-*/vendor/llama.cpp beside it; "
                         "build with `native/build.sh cpu`")
    return found[-1]


def run(cmd: list[str], env: dict | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout,
                          env={**os.environ, **(env or {})})


def last_error(proc: subprocess.CompletedProcess) -> str:
    """The line a user would read first: the exception or the converter's ERROR line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR") or "Error:" in line]
    return (errors or lines or [""])[-1].strip()


def convert(llama: Path, folder: Path, out: Path, mmproj: bool, shim: bool) -> dict:
    """One converter run: the command a user would type, its exit status and its error line."""
    args = [str(folder), *(["--mmproj"] if mmproj else []), "--outfile", str(out), "--outtype", "f32"]
    cmd = [sys.executable, "-c", CONVERT_SHIM, str(llama), *args] if shim else \
          [sys.executable, str(llama / "convert_hf_to_gguf.py"), *args]
    proc = run(cmd, env={"PYTHONPATH": str(llama / "gguf-py")})
    shown = ["python", "-c", "CONVERT_SHIM", str(llama), *args] if shim else \
            [f"PYTHONPATH={llama}/gguf-py", "python", f"{llama}/convert_hf_to_gguf.py", *args]
    return {"command": shlex.join(shown), "rc": proc.returncode,
            "error": last_error(proc) if proc.returncode else None, "out": str(out) if proc.returncode == 0 else None}


def convert_both(llama: Path, folder: Path, work: Path, tag: str) -> dict:
    """Text model and mmproj, stock first, then with the shim where stock failed."""
    runs = {}
    for part, mmproj in (("text", False), ("mmproj", True)):
        out = work / f"{tag}-{part}-f32.gguf"
        stock = convert(llama, folder, out, mmproj, shim=False)
        shimmed = None if stock["rc"] == 0 else convert(llama, folder, out, mmproj, shim=True)
        runs[part] = {"stock": stock, "shimmed": shimmed}
    return runs


RELABEL_CHANGES = [
    f"config.json architectures -> [{AF3_ARCH}]",
    "config.json model_type -> audioflamingo3 and top-level head_dim removed: MusicFlamingoConfig sets "
    "head_dim to RoTE's width (the audio hidden size), the converter loads the config with AutoConfig and "
    "lays text_config over the root keys, so a Qwen2 text_config without head_dim gets RoTE's as "
    "qwen2.attention.key_length and llama.cpp refuses blk.0.attn_k.weight",
]


def relabel_as_af3(folder: Path, out: Path) -> Path:
    """A copy of a Music Flamingo folder that the converter takes for Audio Flamingo 3 (RELABEL_CHANGES)."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(folder, out)
    config = json.loads((out / "config.json").read_text())
    config["architectures"], config["model_type"] = [AF3_ARCH], "audioflamingo3"
    config.pop("head_dim", None)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def mtmd_chunks(native_bin: Path, text_gguf: str, mmproj: str, wav: Path, prompt: str, work: Path,
                flash_attn: str = "auto") -> list:
    """mtmd's prompt as it would be decoded: [("text", ids) | ("audio", (n, n_embd) embeddings), ...].
    ``flash_attn``: "auto" as llama-mtmd-cli runs (on CPU: flash attention, K and V cast to f16) or "off"."""
    out = work / "mtmd_chunks.npz"
    libs = str(native_bin.resolve())
    proc = run([sys.executable, "-c", MTMD_CHILD, text_gguf, mmproj, str(wav), prompt, str(out), flash_attn],
               env={"LLAMA_CPP_LIB_PATH": libs, "MTMD_CPP_LIB": libs})
    if proc.returncode:
        raise GammaError(f"libmtmd child failed (exit {proc.returncode}): {last_error(proc)}")
    with np.load(out) as parts:
        return [(name.split("_")[1], parts[name]) for name in sorted(parts.files)]


# The decoder as transformers runs it: f32 KV cache, no flash attention (the CLI's defaults: f16, auto).
# llama-mtmd-cli also defaults to --no-jinja: the GGUF's chat template is not run, a built-in chatml is.
EXACT_DECODER = ("-ctk", "f32", "-ctv", "f32", "-fa", "off")


def mtmd_cli_answer(native_bin: Path, text_gguf: str, mmproj: str, wav: Path, extra: tuple = ()) -> dict:
    """llama-mtmd-cli's greedy answer (its stdout), the prompt it rendered (from its -v log) and the command."""
    cmd = [str(native_bin / "llama-mtmd-cli"), "-m", text_gguf, "--mmproj", mmproj, "--audio", str(wav),
           "-p", QUESTION, "-n", str(ANSWER_TOKENS), "--temp", "0", "-t", "1", *extra, "-v"]
    proc = run(cmd)
    if proc.returncode:
        raise GammaError(f"llama-mtmd-cli failed (exit {proc.returncode}): {last_error(proc)}")
    return {"command": shlex.join(cmd), "text": proc.stdout.strip(), "prompt": logged_prompt(proc.stderr)}


def logged_prompt(log: str) -> str:
    """The text after ``formatted_chat.prompt:`` in a -v log, up to the next timestamped log line."""
    head, _, rest = log.partition("formatted_chat.prompt: ")
    if not rest:
        raise GammaError("llama-mtmd-cli -v logged no formatted_chat.prompt")
    lines = rest.split("\n")
    end = next(i for i, line in enumerate(lines) if i and re.match(r"\d+\.\d+\.\d+\.\d+ [A-Z] ", line))
    return "\n".join(lines[:end])


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def per_window(got: list[np.ndarray], ref: list[np.ndarray], edge: int = 0) -> list[float]:
    """relative_error of each window over the rows both have (mtmd keeps padding rows the others drop),
    leaving out ``edge`` rows at each end (the tokens whose STFT frames reach across a window's edge)."""
    rows = lambda g, r: slice(edge, min(len(g), len(r)) - edge)  # noqa: E731
    return [relative_error(g[rows(g, r)], r[rows(g, r)]) for g, r in zip(got, ref)]


def mel_facts(processor, samples: np.ndarray, inputs) -> dict:
    """Where mtmd's log-mel (one over the whole file) parts from the processor's (one per window): the
    max-8 clamp floor, and the largest difference inside each window's audio, 3 frames in from its edges."""
    fe = processor.feature_extractor
    whole = fe._np_extract_fbank_features(np.concatenate([samples, np.zeros(fe.n_samples, np.float32)])[None], "cpu")[0]
    frames, windows = fe.nb_max_frames, inputs["input_features"].numpy()
    valid = inputs["input_features_mask"].sum(-1).tolist()
    inner = [np.abs(whole[:, i * frames + 3:i * frames + n - 3] - w[:, 3:n - 3]).max()
             for i, (w, n) in enumerate(zip(windows, valid))]
    return {"clamp_floor_whole_file": float(whole.min()), "clamp_floor_per_window": [float(w.min()) for w in windows],
            "fraction_of_bins_at_floor": float((windows[:, :, :frames] <= windows.min(axis=(1, 2), keepdims=True)).mean()),
            "max_abs_difference_inside_windows": [float(x) for x in inner]}


# --- transformers, the oracle -----------------------------------------------------------------------

def load_reference(folder: Path):
    """(model, processor) by transformers' own classes, float32 eval mode."""
    from transformers import AudioFlamingo3ForConditionalGeneration, AutoProcessor, MusicFlamingoForConditionalGeneration

    is_mf = json.loads((folder / "config.json").read_text())["model_type"] == "musicflamingo"
    model_class = MusicFlamingoForConditionalGeneration if is_mf else AudioFlamingo3ForConditionalGeneration
    return model_class.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def chat(processor, content, **kwargs):
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs)


def project(model, features, mask):
    """The encoder and projector with no RoTE: (windows, tokens, n_embd) numpy."""
    import torch

    with torch.no_grad():
        hidden = model.model.audio_tower(features, input_features_mask=mask).last_hidden_state
        return model.model.multi_modal_projector(hidden).numpy()


def reference_windows(model, processor, samples: np.ndarray) -> dict:
    """The processor's inputs, get_audio_features per window, and the same without RoTE."""
    import torch

    text = chat(processor, [{"type": "audio"}, {"type": "text", "text": QUESTION}])
    inputs = processor(text=text, audio=samples, return_tensors="pt")
    features, mask = inputs["input_features"], inputs["input_features_mask"]
    lengths = model.model.audio_tower._get_feat_extract_output_lengths(mask.sum(-1))[1].tolist()
    extra = {"input_ids": inputs["input_ids"]} if "MusicFlamingo" in type(model).__name__ else {}
    with torch.no_grad():
        embeds = model.get_audio_features(features, mask, **extra).pooler_output.numpy()
    plain = project(model, features, mask)
    return {"inputs": inputs, "windows": np.split(embeds, np.cumsum(lengths)[:-1]),
            "without_rote": [p[:n] for p, n in zip(plain, lengths)]}


def reference_on_mtmd_inputs(model, processor, samples: np.ndarray, n_chunks: int) -> list[np.ndarray]:
    """transformers' encoder and projector on what mtmd feeds its graph: one Whisper log-mel of the file
    plus 30 s of zeros (so one max-8 clamp for the whole file), cut into full 3000-frame chunks, no mask."""
    import torch

    fe = processor.feature_extractor
    mel = fe._np_extract_fbank_features(np.concatenate([samples, np.zeros(fe.n_samples, np.float32)])[None], "cpu")[0]
    frames = fe.nb_max_frames
    chunks = np.stack([mel[:, i * frames:(i + 1) * frames] for i in range(n_chunks)]).astype(np.float32)
    return list(project(model, torch.from_numpy(chunks), torch.ones(n_chunks, frames, dtype=torch.long)))


def round_convolutions_to_f16(model):
    """The model with conv1/conv2 computed as ggml_conv_1d computes them for an F32 mmproj: its im2col is
    f16, so both the input and (through mul_mat's f16 dot product) the weights are rounded to f16."""
    tower = model.model.audio_tower
    for conv in (tower.conv1, tower.conv2):
        conv.weight.data = conv.weight.data.half().float()
        conv.register_forward_pre_hook(lambda module, args: (args[0].half().float(),))
    return model


def greedy(model, processor, **inputs) -> dict:
    """generate's greedy answer (end token and after dropped): ids and text."""
    import torch

    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=ANSWER_TOKENS, do_sample=False)
    ids = out[0, inputs["input_ids"].shape[1]:].tolist() if "input_ids" in inputs else out[0].tolist()
    ends = set(np.atleast_1d(model.generation_config.eos_token_id).tolist())
    ids = ids[:next((i for i, t in enumerate(ids) if t in ends), len(ids))]
    return {"tokens": ids, "text": processor.tokenizer.decode(ids, skip_special_tokens=True)}


def greedy_on_mtmd_layout(model, processor, chunks: list) -> dict:
    """transformers' generate on exactly what mtmd prefills: its text ids embedded by the model, its audio
    embeddings as they are."""
    import torch

    table = model.get_input_embeddings()
    with torch.no_grad():
        parts = [table(torch.from_numpy(x)) if kind == "text" else torch.from_numpy(x) for kind, x in chunks]
    embeds = torch.cat(parts)[None]
    return greedy(model, processor, inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long))


# --- gamma-rt ---------------------------------------------------------------------------------------

def prepare(family: str, work: Path) -> tuple[Path, Path, Path]:
    """(tiny folder, its fp32/F32 bundle, the 70 s 16 kHz mono float WAV)."""
    from gamma_rt.export.families import family_named
    from gamma_rt.export.gguf_export import export_gguf
    from gamma_rt.export.onnx_export import export_onnx
    from gamma_rt.synth import Music, write

    folder, bundle, wav = work / family, work / f"{family}-bundle", work / "song70.wav"
    if not (folder / "config.json").is_file():
        family_named(family).init("tiny", folder, seed=0)
    if not (bundle / "manifest.json").is_file():
        export_onnx(folder, bundle, precision="fp32")
        export_gguf(folder, bundle, "f32", progress=lambda items, **_: items)
    if not wav.is_file():
        write(wav, Music(SONG_SECONDS, rate=SAMPLE_RATE), subtype="FLOAT")
    return folder, bundle, wav


def gamma_side(bundle: Path, wav: Path) -> tuple[list[np.ndarray], dict]:
    """gamma-rt's window embeddings and greedy answer."""
    from gamma_rt.runtime import Pipeline, Sampling

    with Pipeline.open(bundle, threads=1) as pipe:
        windows = [w.embeddings for w in pipe.embed(wav)]
        answer = pipe.ask(wav, QUESTION, Sampling(), ANSWER_TOKENS)[0]
    return windows, {"tokens": list(answer.tokens), "text": answer.text}


def gguf_diff(ours: Path, theirs: Path) -> dict:
    """Tensors equal bit for bit, and the metadata that decides decoding, side by side."""
    from gguf import GGUFReader

    a, b = GGUFReader(str(ours)), GGUFReader(str(theirs))
    ta, tb = {t.name: np.asarray(t.data) for t in a.tensors}, {t.name: np.asarray(t.data) for t in b.tensors}
    equal = [n for n in ta if n in tb and ta[n].shape == tb[n].shape and np.array_equal(ta[n], tb[n])]
    keys = ("qwen2.rope.freq_base", "qwen2.context_length", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token")
    value = lambda r, k: r.fields[k].contents() if k in r.fields else None  # noqa: E731
    return {"tensors": len(ta), "tensors_theirs": len(tb), "bit_identical": len(equal),
            "only_ours": sorted(set(ta) - set(tb)), "only_theirs": sorted(set(tb) - set(ta)),
            "metadata": {k: [value(a, k), value(b, k)] for k in keys},
            "same_chat_template": value(a, "tokenizer.chat_template") == value(b, "tokenizer.chat_template")}


# --- one family -------------------------------------------------------------------------------------

def layout(processor, pieces: list) -> str:
    """A prompt as text with each run of audio positions shown as [audio xN]."""
    out = []
    for kind, x in pieces:
        out.append(f"[audio x{len(x)}]" if kind == "audio" else processor.tokenizer.decode(x.tolist()))
    return "".join(out)


def hf_pieces(ids: list[int], audio_id: int) -> list:
    """transformers' input_ids split into text runs and audio-placeholder runs."""
    pieces, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (ids[i] == audio_id) != (ids[start] == audio_id):
            run_ids = np.array(ids[start:i])
            pieces.append(("audio" if ids[start] == audio_id else "text", run_ids))
            start = i
    return pieces


def converted(runs: dict) -> tuple[str | None, str | None]:
    """The text and mmproj GGUFs a converter run left, stock or shimmed."""
    last = lambda part: (runs[part]["shimmed"] or runs[part]["stock"])["out"]  # noqa: E731 (None: it failed)
    return last("text"), last("mmproj")


def compare_family(family: str, native_bin: Path, llama: Path, work: Path) -> dict:
    import soundfile as sf

    folder, bundle, wav = prepare(family, work)
    samples = sf.read(wav, dtype="float32")[0]
    result = {"folder": str(folder), "converter": convert_both(llama, folder, work, family)}
    source = folder
    if family == "musicflamingo":
        source = relabel_as_af3(folder, work / f"{family}-as-af3")
        result["converter_relabelled_af3"] = {"changes": RELABEL_CHANGES,
                                              **convert_both(llama, source, work, f"{family}-as-af3")}
    text_gguf, mmproj = converted(result.get("converter_relabelled_af3") or result["converter"])
    if not (text_gguf and mmproj):
        result["compared"] = False
        return result
    result["text_gguf_vs_gamma_rt"] = gguf_diff(bundle / "decoder-f32.gguf", Path(text_gguf))
    model, processor = load_reference(folder)
    ref = reference_windows(model, processor, samples)
    cli = mtmd_cli_answer(native_bin, text_gguf, mmproj, wav)
    cli_exact = mtmd_cli_answer(native_bin, text_gguf, mmproj, wav, EXACT_DECODER)
    cli_exact.pop("prompt")
    cli_jinja = mtmd_cli_answer(native_bin, text_gguf, mmproj, wav, ("--jinja", *EXACT_DECODER))
    prompt = cli.pop("prompt")  # what llama-mtmd-cli rendered from the GGUF's chat template, marker included
    chunks = mtmd_chunks(native_bin, text_gguf, mmproj, wav, prompt, work)
    mtmd_windows = [x for kind, x in chunks if kind == "audio"]
    no_flash = mtmd_chunks(native_bin, text_gguf, mmproj, wav, prompt, work, "off")
    exact_attention = [x for kind, x in no_flash if kind == "audio"]
    on_mtmd = reference_on_mtmd_inputs(model, processor, samples, len(mtmd_windows))
    f16_conv = round_convolutions_to_f16(load_reference(folder)[0])
    on_mtmd_f16_conv = reference_on_mtmd_inputs(f16_conv, processor, samples, len(mtmd_windows))
    ours, our_answer = gamma_side(bundle, wav)
    ids = ref["inputs"]["input_ids"][0].tolist()
    result.update(
        compared=True,
        tokens_per_window={"transformers": [len(w) for w in ref["windows"]], "gamma_rt": [len(w) for w in ours],
                           "mtmd": [len(w) for w in mtmd_windows]},
        prompt_tokens={"transformers": len(ids), "mtmd": sum(len(x) for _, x in chunks)},
        prompt_layout={"transformers": layout(processor, hf_pieces(ids, model.config.audio_token_id)),
                       "mtmd": layout(processor, chunks), "mtmd_cli_rendered": prompt,
                       "mtmd_cli_jinja_rendered": cli_jinja.pop("prompt"),
                       "transformers_rendered_same_message": chat(processor, MARKER + QUESTION)},
        embeddings_relative_error={
            "gamma_rt_vs_transformers": per_window(ours, ref["windows"]),
            "mtmd_vs_transformers": per_window(mtmd_windows, ref["windows"]),
            "mtmd_vs_transformers_without_edge_tokens": per_window(mtmd_windows, ref["windows"], edge=1),
            "mtmd_vs_transformers_on_mtmd_inputs": per_window(mtmd_windows, on_mtmd),
            "mtmd_flash_attn_off_vs_transformers_on_mtmd_inputs": per_window(exact_attention, on_mtmd),
            "mtmd_flash_attn_off_vs_transformers_on_mtmd_inputs_f16_conv": per_window(exact_attention, on_mtmd_f16_conv),
            "transformers_on_mtmd_inputs_vs_transformers": per_window(on_mtmd, ref["windows"]),
            "transformers_without_rote_vs_transformers": per_window(ref["without_rote"], ref["windows"]),
            "mtmd_vs_transformers_without_rote": per_window(mtmd_windows, ref["without_rote"])},
        mel=mel_facts(processor, samples, ref["inputs"]),
        answers={"transformers": greedy(model, processor, **ref["inputs"]), "gamma_rt": our_answer,
                 "mtmd_cli": cli, "mtmd_cli_exact_decoder": cli_exact, "mtmd_cli_jinja_exact_decoder": cli_jinja,
                 "transformers_on_mtmd_layout": greedy_on_mtmd_layout(model, processor, chunks)})
    result["answers_agree"] = agreement(result["answers"])
    return result


def agreement(answers: dict) -> dict:
    """Which answers are the same: token for token where both have ids, else as stripped text."""
    same = lambda a, b: answers[a]["text"].strip() == answers[b]["text"].strip()  # noqa: E731
    return {"gamma_rt_tokens_equal_transformers": answers["gamma_rt"]["tokens"] == answers["transformers"]["tokens"],
            "mtmd_cli_text_equals_transformers": same("mtmd_cli", "transformers"),
            "mtmd_cli_text_equals_transformers_on_mtmd_layout": same("mtmd_cli", "transformers_on_mtmd_layout"),
            "mtmd_cli_exact_decoder_text_equals_transformers_on_mtmd_layout":
                same("mtmd_cli_exact_decoder", "transformers_on_mtmd_layout")}


def main(argv: list[str] | None = None) -> int:
    from gamma_rt.machine import describe

    parser = argparse.ArgumentParser(description="Compare llama.cpp's converter + mtmd with gamma-rt and "
                                     "transformers on tiny Audio Flamingo 3 / Music Flamingo 2601 folders.")
    parser.add_argument("--native", type=Path, default=Path("native-build/cpu/bin"),
                        help="native/build.sh's bin folder (llama-mtmd-cli, libllama, libmtmd)")
    parser.add_argument("--work", type=Path, default=Path("artifacts/peer_mtmd"), help="folders, bundles, GGUFs")
    parser.add_argument("--out", type=Path, default=Path("bench/results/peer_mtmd_flamingo.json"))
    parser.add_argument("--family", choices=FAMILIES, action="append", help="default: both")
    args = parser.parse_args(argv)
    if not (args.native / "llama-mtmd-cli").is_file():
        raise GammaError(f"{args.native}/llama-mtmd-cli not found; build it with `native/build.sh cpu`")
    llama = llama_source(args.native)
    args.work.mkdir(parents=True, exist_ok=True)
    commit = run(["git", "-C", str(llama), "rev-parse", "HEAD"]).stdout.strip() or None
    version = run([str(args.native / "llama-mtmd-cli"), "--version"])
    command = shlex.join(["python", "-m", "gamma_rt.bench.peer_mtmd", *(argv or sys.argv[1:])])
    record = {"benchmark": "peer_mtmd_flamingo", "command": command,
              "machine": describe(1),
              "llama_cpp": {"source": str(llama), "commit": commit,
                            "mtmd_cli_version": (version.stderr + version.stdout).strip()},
              "input": {"audio": f"gamma_rt.synth.Music({SONG_SECONDS} s, rate={SAMPLE_RATE}), mono float WAV",
                        "question": QUESTION, "max_tokens": ANSWER_TOKENS, "decoding": "greedy"},
              "families": {f: compare_family(f, args.native, llama, args.work) for f in (args.family or FAMILIES)}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
