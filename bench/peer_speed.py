"""Songs/hour of gamma-rt against llama.cpp's mtmd and transformers on one flamingo folder, in one run
(issue 27).

One Audio Flamingo 3 / Music Flamingo folder (``gamma-rt init --family F --preset P``, or ``--folder``),
gamma-rt's bundle of it (fp32 ONNX + F32 GGUF) and the vendored llama.cpp converter's text GGUF and mmproj
(F32; bench/peer_mtmd.py's CONVERT_SHIM where the stock converter refuses a small vocabulary). A library of
``--songs`` generated songs of ``--seconds`` each (FLAC, MP3, WAV: formats every system reads), the same
``QUESTIONS`` about every song, answers of up to ``--answer-tokens`` tokens, the same ``--threads`` for all.
Each system runs in a child process of its own, so its peak RSS is its own:

- ``gamma-rt`` / ``gamma-rt-n1``: ``gamma-rt tag`` (its run(), in the child) with ``--in-flight N`` and 1, the
  questions as a prompt set whose answers are JSON strings of at most ``answer-tokens - 2`` characters (so at
  most ``answer-tokens`` tokens; the grammar is part of the work);
- ``mtmd``: ``llama-server --mmproj`` with its prompt cache (``cache_prompt``), one slot; a song's questions
  are sent one after the other with the audio first, so the audio prefix of questions 2..5 comes from the
  cache (``timings.cache_n`` says how much); the same JSON schema as ``response_format``;
- ``mtmd-cli``: ``llama-mtmd-cli`` once per question (model load, encode and prefill every time), on the
  first ``--cli-songs`` songs, the same ``--json-schema``;
- ``transformers``: the model's own classes, float32: processor and ``generate`` of the song's questions in
  one batch (``--transformers-batch``; 1 where memory is short: a batch of 5 four-minute songs holds five
  30,000-token attention maps per layer), greedy, ``max_new_tokens = answer-tokens`` (no grammar there), on
  the first ``--transformers-songs`` songs.

Songs/hour is 3600 over the median seconds per song, model load left out (per system, the seconds from one
song done to the next); for gamma-rt with N songs in flight, songs over the span from its engine open to its
last song done. Answers are greedy and of random weights: their token counts are reported, not equalized.

Per system: songs/hour, s per song, time to first token, peak RSS, answer tokens, and the stages (encode /
prefill / decode) where they are measurable. In the same run: this CPU's matrix rate (a float32 GEMM through
numpy, and llama-bench's pp512 on the text GGUF), and gamma-rt's prefill rate as a share of it. Ratios
gamma-rt / best mtmd setup (target >= 2) and gamma-rt / transformers (target >= 6), and where one falls
short, the stage that costs it.

    python -m gamma_rt.bench.peer_speed --family audioflamingo3 --preset small --songs 8 --cli-songs 1 \\
        --seconds 240 --threads 2 --in-flight 8
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import resource
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from gamma_rt.errors import GammaError
from gamma_rt.runtime.options import KV_CACHE_NAMES

from .entry import run_module, write_json

RESULT_FORMAT = "gamma-rt-bench-peer-speed/1"
SYSTEMS = ("gamma-rt", "gamma-rt-n1", "mtmd", "mtmd-cli", "transformers")
QUESTIONS = (
    "What is the genre of this song?",
    "What is the mood of this song?",
    "Which instruments can be heard in this song?",
    "Describe the tempo and the rhythm of this song.",
    "Describe the vocals of this song, if there are any.",
)
FORMATS = ("flac", "mp3", "wav")  # read by gamma-rt, by mtmd's miniaudio and by the runtime's reader
TARGETS = {"mtmd": 2.0, "transformers": 6.0}

EXAMPLE = """\
example (the lead's small-preset run, about an hour on 2 cores):
  python -m gamma_rt.bench.peer_speed --family audioflamingo3 --preset small --songs 8 --cli-songs 1 \\
      --seconds 240 --threads 2 --in-flight 8
quick check on the tiny preset (a minute or two):
  python -m gamma_rt.bench.peer_speed --preset tiny --songs 2 --cli-songs 1 --transformers-songs 1 \
      --seconds 20 --in-flight 2
"""


# --- pure helpers -----------------------------------------------------------------------------------

def answer_schema(answer_tokens: int) -> dict:
    """A JSON string of at most ``answer_tokens - 2`` characters: with its two quotes, at most
    ``answer_tokens`` tokens (every token is at least one character)."""
    if answer_tokens < 3:
        raise GammaError(f"--answer-tokens must be at least 3 (two quotes and a character), got {answer_tokens}")
    return {"type": "string", "maxLength": answer_tokens - 2}


def prompt_set_toml(questions: tuple[str, ...], answer_tokens: int) -> str:
    """The questions as a gamma-rt tag prompt set, greedy, answers per ``answer_schema``."""
    schema = json.dumps(answer_schema(answer_tokens))
    lines = ['name = "peer-speed"', "", "[sampling]", "temperature = 0.0", "seed = 0"]
    for i, q in enumerate(questions):
        lines += ["", "[[prompt]]", f'name = "q{i + 1}"', f"question = {json.dumps(q)}", f"schema = '{schema}'"]
    return "\n".join(lines) + "\n"


def median_rate(per_song_s: list[float]) -> float | None:
    """Songs per hour from the median of the per-song times (a noisy shared machine moves the mean)."""
    per_song_s = [s for s in per_song_s if s is not None]
    if not per_song_s:
        return None
    return round(3600.0 / statistics.median(per_song_s), 2)


def ctx_for(seconds: float, questions: int, answer_tokens: int, tokens_per_window: int = 750) -> int:
    """Context cells a peer needs for one song: its 30 s windows (one more for mtmd's trailing chunk), the
    template and every question with its answer, rounded up to 256."""
    windows = int(-(-seconds // 30)) + 1
    need = windows * tokens_per_window + 256 + questions * (64 + answer_tokens)
    return -(-need // 256) * 256


_CLI_PATTERNS = {
    # mtmd_helper_eval_chunk_single logs "audio slice encoded in"; the batched path "mtmd batch encoding done in"
    "encode_ms": re.compile(r"(?:slice encoded|batch encoding done) in\s+([\d.]+)\s*ms"),
    "prefill_ms": re.compile(r"prompt eval time\s*=\s*([\d.]+)\s*ms\s*/\s*(\d+)\s*tokens"),
    "decode_ms": re.compile(r"\beval time\s*=\s*([\d.]+)\s*ms\s*/\s*(\d+)\s*runs"),
    "load_ms": re.compile(r"load time\s*=\s*([\d.]+)\s*ms"),
}


def parse_cli_log(log: str) -> dict:
    """The stages llama-mtmd-cli logs: encode (sum of its audio slices), prefill (prompt eval, embeddings
    included), decode (eval), model load; ms and token counts. A stage it did not log is None."""
    out: dict = {}
    encodes = [float(m.group(1)) for m in _CLI_PATTERNS["encode_ms"].finditer(log)]
    out["encode_ms"] = round(sum(encodes), 2) if encodes else None
    out["audio_slices"] = len(encodes)
    lines = [line for line in log.splitlines() if "prompt eval time" not in line]
    for key, count in (("prefill_ms", "prefill_tokens"), ("decode_ms", "decode_tokens")):
        text = log if key == "prefill_ms" else "\n".join(lines)
        found = _CLI_PATTERNS[key].findall(text)
        out[key] = float(found[-1][0]) if found else None
        out[count] = int(found[-1][1]) if found else None
    found = _CLI_PATTERNS["load_ms"].findall(log)
    out["load_ms"] = float(found[-1]) if found else None
    return out


_STAMP = re.compile(r"^(\d+)\.(\d+)\.(\d+)\.(\d+) ")


def log_seconds(line: str) -> float | None:
    """The time stamp of a llama.cpp log line (``M.SS.mmm.uuu``, since the process started), seconds."""
    m = _STAMP.match(line)
    if not m:
        return None
    minutes, sec, ms, us = (int(x) for x in m.groups())
    return minutes * 60 + sec + ms / 1e3 + us / 1e6


def server_encodes_ms(log: str) -> list[float]:
    """llama-server's audio encodes (at ``-lv 4``): from each 'encoding mtmd batch' line to the next
    'decoding audio batch' (the encoder's output going into the decoder), ms. The server does not log the
    encode's duration itself."""
    out, start = [], None
    for line in log.splitlines():
        if "encoding mtmd batch" in line:
            start = log_seconds(line)
        elif "decoding audio batch" in line and start is not None:
            t = log_seconds(line)
            if t is not None:
                out.append(round((t - start) * 1e3, 3))
            start = None
    return out


def parse_sse(lines) -> tuple[float | None, str, dict | None, float]:
    """An OpenAI-style stream of ``data: {...}`` lines: (seconds to the first content piece, the answer text,
    the server's ``timings`` from the last chunk that has them, seconds to the end). ``lines`` yields
    (t, line) with t the seconds since the request was sent."""
    first, text, timings, end = None, [], None, 0.0
    for t, line in lines:
        end = t
        line = line.strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if "error" in chunk:
            raise GammaError(f"llama-server: {chunk['error']}")
        for choice in chunk.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                first = t if first is None else first
                text.append(piece)
        timings = chunk.get("timings", timings)
    return first, "".join(text), timings, end


def decoder_flops(n: int, n_past: int, text: dict) -> float:
    """FLOP of one llama.cpp batch of ``n`` positions after ``n_past`` cached ones (Qwen2: bias terms left out),
    the output head on the last position only (what prefill computes)."""
    from .flops import qwen3_layer_params

    hidden, layers = text["hidden_size"], text["num_hidden_layers"]
    heads, kv = text["num_attention_heads"], text["num_key_value_heads"]
    head_dim = text.get("head_dim") or hidden // heads
    matrices = 2 * n * layers * qwen3_layer_params(hidden, text["intermediate_size"], heads, kv, head_dim)
    attention = layers * 4 * n * (n_past + n / 2) * heads * head_dim  # QK^T and AV over the causal rows
    return matrices + attention + 2 * hidden * text["vocab_size"]


def ratios(songs_per_hour: dict) -> dict:
    """gamma-rt over the best mtmd setup and over transformers, each with its target and whether it is met."""
    ours = songs_per_hour.get("gamma-rt")
    mtmd = [v for k, v in songs_per_hour.items() if k in ("mtmd", "mtmd-cli") and v]
    peers = {"mtmd": max(mtmd) if mtmd else None, "transformers": songs_per_hour.get("transformers")}
    out = {}
    for peer, theirs in peers.items():
        r = round(ours / theirs, 3) if ours and theirs else None
        out[f"gamma-rt/{'best-mtmd' if peer == 'mtmd' else peer}"] = {
            "ratio": r, "target": TARGETS[peer], "met": None if r is None else r >= TARGETS[peer]}
    return out


def shortfall(ours: dict, theirs: dict, target: float) -> dict | None:
    """Where gamma-rt misses ``target`` x a peer: the per-song seconds it may spend (the peer's over the
    target), what it spends, and the stage most over its share of that budget (the peer's stage seconds over
    the target). ``ours``/``theirs``: {"s_per_song", "stages_s_per_song": {stage: s}}. None when met."""
    budget = theirs["s_per_song"] / target
    if ours["s_per_song"] <= budget:
        return None
    over = {}
    for stage, s in (ours.get("stages_s_per_song") or {}).items():
        peer_s = (theirs.get("stages_s_per_song") or {}).get(stage)
        if s is not None and peer_s is not None:
            over[stage] = round(s - peer_s / target, 3)
    worst = max(over, key=over.get) if over else None
    return {"budget_s_per_song": round(budget, 3), "s_per_song": round(ours["s_per_song"], 3),
            "over_budget_s": round(ours["s_per_song"] - budget, 3), "stage_excess_s": over, "costliest_stage": worst}


def vm_hwm_mib(pid: int) -> float | None:
    """Peak RSS of a running process (Linux VmHWM), MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _rss() -> float:
    from gamma_rt.machine import peak_rss_mib

    return round(peak_rss_mib(), 1)


def _children_rss() -> float:
    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)


def _summary(per_song: list[dict], extra: dict) -> dict:
    """A system's block from its per-song rows {"s", "ttft_s", "stages_s": {...}, "answer_tokens"}."""
    s = [r["s"] for r in per_song]
    stages: dict = {}
    for r in per_song:
        for k, v in (r.get("stages_s") or {}).items():
            stages.setdefault(k, []).append(v)
    ttft = [r["ttft_s"] for r in per_song if r.get("ttft_s") is not None]
    tokens = [r["answer_tokens"] for r in per_song if r.get("answer_tokens") is not None]
    return {"songs": len(per_song), "songs_per_hour": median_rate(s), "s_per_song": round(statistics.median(s), 3),
            "s_per_song_all": [round(x, 3) for x in s],
            "ttft_s": round(statistics.median(ttft), 3) if ttft else None,
            "stages_s_per_song": {k: round(statistics.median([x for x in v if x is not None]), 3)
                                  for k, v in stages.items() if any(x is not None for x in v)},
            "answer_tokens_per_song": round(statistics.median(tokens), 1) if tokens else None,
            **extra}


# --- the systems, each in its own child process ------------------------------------------------------

def run_gamma(spec: dict, n: int) -> dict:
    """``gamma-rt tag`` with ``n`` songs in flight, in this process, its decoder calls and songs timed."""
    from gamma_rt.runtime import embed
    from gamma_rt.runtime.decoder import DecoderSession
    from gamma_rt.runtime.options import RuntimeOptions
    from gamma_rt.runtime.tagging import in_flight
    from gamma_rt.runtime.tagging.prompt_sets import PromptSet
    from gamma_rt.runtime.tagging.records import read_records
    from gamma_rt.runtime.tagging.run import TagJob, run

    text = spec["text_config"]
    calls = {"prefill_s": 0.0, "prefill_tokens": 0, "prefill_flop": 0.0, "decode_s": 0.0, "decode_tokens": 0,
             "graphs_s": 0.0}
    lock = threading.Lock()

    def timed(name):
        real = getattr(DecoderSession, name)

        def wrapper(self, piece, seq_id=0):
            n_past, count = self.n_past(seq_id), len(piece)
            t0 = time.perf_counter()
            real(self, piece, seq_id)
            with lock:
                calls["prefill_s"] += time.perf_counter() - t0
                calls["prefill_tokens"] += count
                calls["prefill_flop"] += decoder_flops(count, n_past, text)
        setattr(DecoderSession, name, wrapper)

    timed("eval_embeddings")
    timed("eval_tokens")
    real_step = DecoderSession.step

    def step(self, items, samplers):
        t0 = time.perf_counter()
        drawn = real_step(self, items, samplers)
        calls["decode_s"] += time.perf_counter() - t0
        calls["decode_tokens"] += len(items)
        return drawn

    DecoderSession.step = step
    real_batch = embed._encode_batch

    class TimedBackend:  # the audio graphs' calls, which the records' stage timings leave out
        def __init__(self, backend):
            self._backend = backend

        def __getattr__(self, name):
            return getattr(self._backend, name)

        def encode(self, feeds):
            t0 = time.perf_counter()
            try:
                return self._backend.encode(feeds)
            finally:
                with lock:
                    calls["graphs_s"] += time.perf_counter() - t0

    embed._encode_batch = lambda batch, backend, *rest: real_batch(batch, TimedBackend(backend), *rest)
    songs: dict = {}
    real_event = in_flight.SongJob._on_event

    def on_event(self, event):
        row = songs.setdefault(self.where, {"started": self.started})
        if isinstance(event, in_flight.Piece) and "first" not in row:
            row["first"] = time.perf_counter()
        real_event(self, event)
        if self.open == 0 or self.failure is not None:
            row.setdefault("done", time.perf_counter())

    in_flight.SongJob._on_event = on_event
    opened: list[float] = []
    results = Path(spec["work"]) / f"tag-{n}"
    shutil.rmtree(results, ignore_errors=True)  # a fresh run: no journal entry or cached embedding of a past one
    job = TagJob(library=Path(spec["library"]), bundle=Path(spec["bundle"]), out=results,
                 prompt_set=PromptSet.load(spec["prompts"]), in_flight=n,
                 runtime=RuntimeOptions(threads=spec["threads"], decoder=spec["decoder"],
                                        kv_cache=spec.get("kv_cache", "auto")))
    t0 = time.perf_counter()
    summary = run(job, on_engine=lambda said: opened.append(time.perf_counter()))
    wall = time.perf_counter() - t0
    records = read_records(summary.records_file, "jsonl")
    bad = [(r["path"], r["error"]) for r in records if r["status"] != "ok"]
    if bad or not records:
        raise GammaError(f"gamma-rt tag --in-flight {n}: {len(bad)} of {len(records)} records failed: {bad[:2]}")
    start = opened[0] if opened else t0
    done = sorted(r["done"] for r in songs.values())
    span = done[-1] - start  # model load left out, as for the peers
    per_song, prev = [], start
    n_songs = len(records)
    front_end_s = sum((r.get("timings") or {}).get("front_end_ms", 0) for r in records) / 1e3
    encode_s = (front_end_s + calls["graphs_s"]) / n_songs
    for i, path in enumerate(sorted(songs, key=lambda p: songs[p]["done"])):
        row = songs[path]
        # one at a time a song's time is the gap since the one before; in flight the run's rate per song
        s = row["done"] - prev if n == 1 else span / n_songs
        prev = row["done"]
        per_song.append({"s": s, "ttft_s": row["first"] - row["started"] if "first" in row else None,
                         "answer_tokens": calls["decode_tokens"] / n_songs,
                         "stages_s": {"encode": encode_s, "prefill": calls["prefill_s"] / n_songs,
                                      "decode": calls["decode_s"] / n_songs}})
    rate = n_songs * 3600 / span
    block = _summary(per_song, {
        "in_flight": n, "wall_s": round(wall, 2), "load_s": round(start - t0, 2), "peak_rss_mib": _rss(),
        "prefill_tokens": calls["prefill_tokens"], "prefill_s": round(calls["prefill_s"], 3),
        "prefill_gflops": round(calls["prefill_flop"] / max(1e-9, calls["prefill_s"]) / 1e9, 2),
        "decode_steps_tokens": calls["decode_tokens"],
        "stages_note": "encode: log-mel front end (the records' front_end_ms) and the audio graphs' calls; prefill: "
                       "eval_embeddings + eval_tokens; decode: the batched sampling steps",
        "answers": {Path(r["path"]).name: r["answers"] for r in records}})
    if n > 1:
        block["songs_per_hour"] = round(rate, 2)
        block["songs_per_hour_from"] = "songs over the span from engine open to the last song done (in flight)"
    else:
        block["songs_per_hour_from"] = "median of the gaps between songs done (one at a time)"
    return block


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _audio_part(path: Path) -> dict:
    fmt = path.suffix.lstrip(".").lower()
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(path.read_bytes()).decode(),
                                                   "format": fmt}}


def _post_stream(port: int, body: dict, timeout: float) -> tuple[float | None, str, dict | None, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise GammaError(f"llama-server: HTTP {resp.status}: {resp.read()[:500].decode(errors='replace')}")

    def lines():
        for raw in resp:
            yield time.perf_counter() - t0, raw.decode("utf-8", errors="replace")

    try:
        return parse_sse(lines())
    finally:
        conn.close()


def run_server(spec: dict) -> dict:
    """llama-server with the mmproj and its prompt cache, one slot; each song's questions in turn."""
    native = Path(spec["native"])
    port = _free_port()
    log_path = Path(spec["work"]) / "llama-server.log"
    cmd = [str(native / "llama-server"), "-m", spec["text_gguf"], "--mmproj", spec["mmproj"],
           "--host", "127.0.0.1", "--port", str(port), "-t", str(spec["threads"]), "-tb", str(spec["threads"]),
           "-c", str(spec["ctx"]), "-np", "1", "--no-warmup", "-lv", "4"]  # -lv 4: its encodes' log lines
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        t0 = time.perf_counter()
        while True:
            if proc.poll() is not None:
                raise GammaError(f"llama-server exited ({proc.returncode}): {log_path.read_text()[-800:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.perf_counter() - t0 > 600:
                raise GammaError("llama-server did not answer /health in 600 s")
            time.sleep(0.2)
        load_s = time.perf_counter() - t0
        per_song, requests = [], []
        for song in spec["library_files"]:
            audio = _audio_part(Path(song))
            before = len(server_encodes_ms(log_path.read_text(errors="replace")))
            row = {"s": 0.0, "ttft_s": None, "answer_tokens": 0, "stages_s": {"encode": 0.0, "prefill": 0.0,
                                                                                "decode": 0.0}}
            for q in spec["questions"]:
                body = {"messages": [{"role": "user", "content": [audio, {"type": "text", "text": q}]}],
                        "max_tokens": spec["answer_tokens"], "temperature": 0, "stream": True, "cache_prompt": True,
                        "response_format": {"type": "json_schema", "json_schema": {"schema": spec["schema"]}}}
                first, text, timings, end = _post_stream(port, body, timeout=3600)
                timings = timings or {}
                row["s"] += end
                row["ttft_s"] = first if row["ttft_s"] is None else row["ttft_s"]
                row["answer_tokens"] += timings.get("predicted_n") or 0
                row["stages_s"]["prefill"] += (timings.get("prompt_ms") or 0) / 1e3
                row["stages_s"]["decode"] += (timings.get("predicted_ms") or 0) / 1e3
                requests.append({"song": Path(song).name, "s": round(end, 3), "ttft_s": first, "text": text,
                                 "cache_n": timings.get("cache_n"), "prompt_n": timings.get("prompt_n"),
                                 "predicted_n": timings.get("predicted_n")})
            encoded = server_encodes_ms(log_path.read_text(errors="replace"))[before:]
            row["stages_s"]["encode"] = sum(encoded) / 1e3
            if row["stages_s"]["prefill"] >= row["stages_s"]["encode"]:  # prompt_ms includes the audio's encode
                row["stages_s"]["prefill"] -= row["stages_s"]["encode"]
            per_song.append(row)
        rss = vm_hwm_mib(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    reused = [r["cache_n"] for r in requests[1:len(spec["questions"])]]
    return _summary(per_song, {
        "command": shlex.join(["llama-server", *cmd[1:]]).replace(spec["work"], "WORK"),
        "load_s": round(load_s, 2), "peak_rss_mib": rss, "requests": requests,
        "audio_prefix_reused": bool(reused) and all((c or 0) > 0 for c in reused),
        "stages_note": "encode: the server log's spans from 'encoding mtmd batch' to 'decoding audio batch'; prefill: timings.prompt_ms less the encode; "
                       "decode: timings.predicted_ms; ttft: the first question's first streamed piece"})


def run_cli(spec: dict) -> dict:
    """llama-mtmd-cli once per question: every question loads, encodes and prefills anew."""
    native = Path(spec["native"])
    per_song, runs = [], []
    for song in spec["cli_files"]:
        row = {"s": 0.0, "ttft_s": None, "answer_tokens": 0, "stages_s": {"encode": 0.0, "prefill": 0.0,
                                                                            "decode": 0.0, "load": 0.0}}
        for q in spec["questions"]:
            cmd = [str(native / "llama-mtmd-cli"), "-m", spec["text_gguf"], "--mmproj", spec["mmproj"],
                   "--audio", song, "-p", q, "-n", str(spec["answer_tokens"]), "--temp", "0",
                   "-t", str(spec["threads"]), "-tb", str(spec["threads"]), "-c", str(spec["ctx"]),
                   "--json-schema", json.dumps(spec["schema"]), "-v"]  # -v: llama_perf's stage lines
            t0 = time.perf_counter()
            err = tempfile.TemporaryFile(mode="w+")
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
            first, out = None, bytearray()
            while True:
                chunk = proc.stdout.read1(4096)
                if not chunk:
                    break
                if first is None and chunk.strip():
                    first = time.perf_counter() - t0
                out += chunk
            rc = proc.wait()
            wall = time.perf_counter() - t0
            err.seek(0)
            log = err.read()
            err.close()
            if rc:
                raise GammaError(f"llama-mtmd-cli failed (exit {rc}): {log.strip().splitlines()[-1:]}")
            stages = parse_cli_log(log)
            row["s"] += wall
            row["ttft_s"] = first if row["ttft_s"] is None else row["ttft_s"]
            row["answer_tokens"] += (stages["decode_tokens"] or 0) + 1  # eval runs: the first token comes from prefill
            for k in ("encode", "prefill", "decode", "load"):
                row["stages_s"][k] += (stages[f"{k}_ms"] or 0) / 1e3
            if stages["prefill_ms"] and stages["encode_ms"] and stages["prefill_ms"] >= stages["encode_ms"]:
                row["stages_s"]["prefill"] -= stages["encode_ms"] / 1e3  # llama_perf's timer runs through it
            runs.append({"song": Path(song).name, "s": round(wall, 3), "ttft_s": first,
                         "text": out.decode(errors="replace").strip(), **stages})
        per_song.append(row)
    return _summary(per_song, {
        "command": shlex.join(["llama-mtmd-cli", *cmd[1:]]).replace(spec["work"], "WORK"),
        "peak_rss_mib": _children_rss(), "runs": runs,
        "stages_note": "from each run's -v log: the encodes ('batch encoding done in'), llama_perf prompt eval "
                       "less the encode (its timer runs from the text chunk before the audio), eval (decode), load; ttft: process start to its first answer bytes"})


def run_transformers(spec: dict) -> dict:
    """The model's own classes, float32: processor, then generate over the song's questions in batches."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    from gamma_rt.runtime.audio import load_audio

    from .hf_baseline import load
    from .peer_mtmd import chat

    t0 = time.perf_counter()
    model, processor = load(spec["folder"], spec["threads"])
    load_s = time.perf_counter() - t0
    processor.tokenizer.padding_side = "left"
    rate = processor.feature_extractor.sampling_rate
    clock = {"encode": 0.0}

    def before(module, args, kwargs):
        clock["t"] = time.perf_counter()

    def after(module, args, kwargs, out):
        clock["encode"] += time.perf_counter() - clock["t"]

    for part in (model.model.audio_tower, model.model.multi_modal_projector):
        part.register_forward_pre_hook(before, with_kwargs=True)
        part.register_forward_hook(after, with_kwargs=True)

    class FirstToken(LogitsProcessor):  # generate calls it once per new token, the first after prefill
        def __call__(self, input_ids, scores):
            clock.setdefault("first", time.perf_counter())
            return scores

    batch = spec["transformers_batch"]
    pad = processor.tokenizer.pad_token_id
    ends = set(int(x) for x in torch.atleast_1d(torch.tensor(model.generation_config.eos_token_id)).tolist()) \
        if model.generation_config.eos_token_id is not None else set()
    per_song, answers = [], {}
    for song in spec["transformers_files"]:
        t_song = time.perf_counter()
        audio = load_audio(song, rate)
        row = {"s": 0.0, "ttft_s": None, "answer_tokens": 0, "stages_s": {"encode": 0.0, "prefill": 0.0,
                                                                            "decode": 0.0, "processor": 0.0}}
        qs = list(spec["questions"])
        for i in range(0, len(qs), batch):
            group = qs[i:i + batch]
            texts = [chat(processor, [{"type": "audio"}, {"type": "text", "text": q}]) for q in group]
            t1 = time.perf_counter()
            inputs = processor(text=texts, audio=[audio] * len(group), return_tensors="pt")  # pads the texts itself
            t2 = time.perf_counter()
            clock.pop("first", None)
            clock["encode"] = 0.0
            with torch.inference_mode():
                out = model.generate(**inputs, max_new_tokens=spec["answer_tokens"], do_sample=False,
                                     logits_processor=LogitsProcessorList([FirstToken()]), pad_token_id=pad)
            t3 = time.perf_counter()
            first = clock.get("first", t3)
            if row["ttft_s"] is None:
                row["ttft_s"] = first - t_song
            row["stages_s"]["processor"] += t2 - t1
            row["stages_s"]["encode"] += clock["encode"]
            row["stages_s"]["prefill"] += first - t2 - clock["encode"]
            row["stages_s"]["decode"] += t3 - first
            new = out[:, inputs["input_ids"].shape[1]:].tolist()
            for q, ids in zip(group, new):
                ids = ids[:next((j for j, t in enumerate(ids) if t in ends), len(ids))]
                row["answer_tokens"] += len(ids)
                answers.setdefault(Path(song).name, []).append(processor.tokenizer.decode(ids, skip_special_tokens=True))
        row["s"] = time.perf_counter() - t_song
        per_song.append(row)
    return _summary(per_song, {
        "class": type(model).__name__, "dtype": "float32", "batch": batch, "load_s": round(load_s, 2),
        "peak_rss_mib": _rss(), "torch_threads": torch.get_num_threads(), "answers": answers,
        "stages_note": "encode: forward hooks on audio_tower and multi_modal_projector; prefill: from generate's "
                       "start to its first logits processor call, less the encode; decode: the rest; the "
                       "processor (log-mel, template) apart; no grammar in transformers: up to "
                       "max_new_tokens tokens per answer"})


def run_matrix(spec: dict) -> dict:
    """This CPU's float32 matrix rate at the bench's threads: numpy GEMM and llama-bench pp512."""
    import numpy as np

    n = spec.get("gemm_n", 2048)
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    a @ b
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    out = {"numpy_gemm": {"n": n, "gflops": round(2 * n ** 3 / min(times) / 1e9, 2), "best_s": round(min(times), 4),
                          "threads_env": spec["threads"]}}
    bench = Path(spec["native"]) / "llama-bench"
    if bench.is_file():
        cmd = [str(bench), "-m", spec["text_gguf"], "-p", "512", "-n", "0", "-t", str(spec["threads"]), "-r", "2",
               "-o", "json"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if proc.returncode == 0:
            rows = json.loads(proc.stdout)
            tps = rows[0]["avg_ts"]
            flop = decoder_flops(512, 0, spec["text_config"]) / 512  # per token of a 512-token prefill
            out["llama_bench_pp512"] = {"tokens_per_s": round(tps, 2), "gflops": round(tps * flop / 1e9, 2),
                                        "command": shlex.join(["llama-bench", *cmd[1:]]).replace(spec["work"], "WORK")}
        else:
            out["llama_bench_pp512"] = {"error": proc.stderr.strip().splitlines()[-1:]}
    rates = [v["gflops"] for v in out.values() if isinstance(v, dict) and v.get("gflops")]
    out["matrix_rate_gflops"] = max(rates)
    return out


CHILDREN = {"gamma-rt": lambda s: run_gamma(s, s["in_flight"]), "gamma-rt-n1": lambda s: run_gamma(s, 1),
            "mtmd": run_server, "mtmd-cli": run_cli, "transformers": run_transformers, "matrix": run_matrix}


def child(system: str, spec_path: Path) -> dict:
    """Run ``system`` in a child process of its own; its JSON block (the last stdout line)."""
    spec = json.loads(spec_path.read_text())
    env = {**os.environ}
    if system == "matrix":
        env.update({k: str(spec["threads"]) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    cmd = [sys.executable, "-m", "gamma_rt.bench.peer_speed", "--one", system, "--spec", str(spec_path)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        tail = proc.stderr.strip().splitlines()[-3:]
        raise GammaError(f"{system}: child failed (exit {proc.returncode}): {' | '.join(tail)}")
    block = json.loads(proc.stdout.strip().splitlines()[-1])
    block["child_wall_s"] = round(time.perf_counter() - t0, 2)
    return block


# --- preparing the folder, bundle, GGUFs and library -------------------------------------------------

def prepare(args, work: Path, say) -> dict:
    from gamma_rt.export.families import family_named
    from gamma_rt.export.gguf_export import export_gguf
    from gamma_rt.export.onnx_export import export_onnx

    from .peer_mtmd import convert_both, converted, llama_source
    from .tagging import make_library

    folder = args.folder or work / f"{args.family}-{args.preset}"
    if not (folder / "config.json").is_file():
        if args.folder:
            raise GammaError(f"{folder}: no config.json")
        say(f"init {args.family} --preset {args.preset}")
        family_named(args.family).init(args.preset, folder, seed=0)
    bundle = work / f"{folder.name}-bundle"
    if not (bundle / "manifest.json").is_file():
        say("export onnx (fp32) + gguf (F32)")
        export_onnx(folder, bundle, precision="fp32")
        export_gguf(folder, bundle, "f32", progress=lambda items, **_: items)
    llama = llama_source(args.native)
    ggufs = work / "mtmd"
    ggufs.mkdir(exist_ok=True)
    text_gguf, mmproj = ggufs / f"{folder.name}-text-f32.gguf", ggufs / f"{folder.name}-mmproj-f32.gguf"
    conversion = None
    if not (text_gguf.is_file() and mmproj.is_file()):
        say("llama.cpp convert_hf_to_gguf.py (text, mmproj; F32)")
        conversion = convert_both(llama, folder, ggufs, folder.name)
        got = converted(conversion)
        if not all(got):
            raise GammaError(f"llama.cpp's converter failed on {folder}: {json.dumps(conversion)[:800]}")
    library = work / f"library-{args.songs}x{args.seconds:g}s"
    if not library.is_dir() or len(list(library.iterdir())) != args.songs:
        say(f"library: {args.songs} songs of {args.seconds:g} s ({', '.join(FORMATS)})")
        make_library(library, args.songs, args.seconds, FORMATS)
    files = sorted(str(p) for p in library.iterdir())
    prompts = work / "peer_speed_prompts.toml"
    prompts.write_text(prompt_set_toml(QUESTIONS, args.answer_tokens))
    config = json.loads((folder / "config.json").read_text())
    return {"folder": str(folder), "bundle": str(bundle), "text_gguf": str(text_gguf), "mmproj": str(mmproj),
            "library": str(library), "library_files": files, "cli_files": files[:args.cli_songs],
            "transformers_files": files[:args.transformers_songs],
            "prompts": str(prompts), "questions": list(QUESTIONS), "schema": answer_schema(args.answer_tokens),
            "answer_tokens": args.answer_tokens, "threads": args.threads, "in_flight": args.in_flight,
            "decoder": "decoder", "kv_cache": args.kv_cache, "native": str(args.native), "work": str(work),
            "ctx": ctx_for(args.seconds, len(QUESTIONS), args.answer_tokens),
            "transformers_batch": args.transformers_batch, "text_config": config["text_config"],
            "conversion": conversion, "llama_source_commit": _git_commit(llama)}


def _git_commit(path: Path) -> str | None:
    proc = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or None


def fairest_mtmd(systems: dict) -> dict:
    """Which mtmd setup a user would pick: the faster of the two, with why."""
    server, cli = systems.get("mtmd") or {}, systems.get("mtmd-cli") or {}
    a, b = server.get("songs_per_hour"), cli.get("songs_per_hour")
    if a is None and b is None:
        return {"setup": None, "why": "neither mtmd setup ran"}
    pick = "mtmd" if (b is None or (a is not None and a >= b)) else "mtmd-cli"
    why = ("llama-server loads the model once and, with cache_prompt, keeps the song's audio prefix in its one "
           "slot: questions 2..5 reuse it (timings.cache_n) and pay only their own tokens; llama-mtmd-cli "
           "loads, encodes and prefills the whole song again for every question")
    if pick == "mtmd-cli":
        why = "measured faster here than llama-server with its prompt cache"
    if server and not server.get("audio_prefix_reused", True):
        why += "; note: the server did NOT reuse the audio prefix in this run (cache_n 0)"
    return {"setup": pick, "songs_per_hour": max(x for x in (a, b) if x is not None), "why": why}


KV_CACHE_SAID = {"auto": "f32, flash attention off (gamma-rt's default on an F32 decoder: exact to the reference)",
                 "f32": "f32, flash attention off", "f16": "f16 with flash attention (--kv-cache f16)"}


def _public(command: str, work: Path, native_bin: Path) -> str:
    """The command as run, without this machine's folders: WORK and NATIVE for the work and native folders."""
    for path, name in ((work, "WORK"), (native_bin, "NATIVE")):
        command = command.replace(str(path), name)
    return re.sub(r"--out \S+", lambda m: "--out " + Path(m.group(0)[6:]).name, command)


def libllama_said(native_bin: Path) -> str:
    """Which libllama gamma-rt's child loads: the wheel's own, or the one LLAMA_CPP_LIB_PATH names."""
    lib = os.environ.get("LLAMA_CPP_LIB_PATH")
    if not lib:
        return "llama-cpp-python's wheel (built at pip install)"
    if Path(lib).resolve() == native_bin.resolve():
        return "LLAMA_CPP_LIB_PATH: native/build.sh's libllama, the build llama-server and llama-mtmd-cli run on"
    return "LLAMA_CPP_LIB_PATH: a libllama of the user's"


def _bench(args, command: str) -> None:
    from gamma_rt.machine import describe, load_average

    say = lambda msg: print(f"peer_speed: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    wanted = [s for s in args.systems.split(",") if s]
    unknown = set(wanted) - set(SYSTEMS)
    if unknown:
        raise GammaError(f"--systems: unknown {sorted(unknown)}; from {list(SYSTEMS)}")
    needs_native = {"mtmd": "llama-server", "mtmd-cli": "llama-mtmd-cli"}
    for system, tool in needs_native.items():
        if system in wanted and not (args.native / tool).is_file():
            raise GammaError(f"{args.native}/{tool} not found; build it with `JOBS=2 nice native/build.sh cpu`")
    work = args.work or Path(tempfile.mkdtemp(prefix="peer-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    work = work.resolve()
    args.native = args.native.resolve()
    before = load_average()
    spec = prepare(args, work, say)
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    systems = {}
    for system in ["matrix", *wanted]:
        say(f"{system} ...")
        try:
            systems[system] = child(system, spec_path)
        except GammaError as e:  # one system failing (out of memory, say) loses none of the others' hour
            if system == "matrix":
                raise
            systems[system] = {"error": str(e), "songs_per_hour": None}
        say(f"{system}: {systems[system].get('songs_per_hour', systems[system].get('matrix_rate_gflops'))}"
            + (f" ({systems[system]['error']})" if "error" in systems[system] else ""))
    matrix = systems.pop("matrix")
    rates = {s: systems[s]["songs_per_hour"] for s in SYSTEMS if s in systems}
    ok = {s: b for s, b in systems.items() if "error" not in b}
    gamma = ok.get("gamma-rt")
    prefill_share = None
    if gamma:
        prefill_share = round(100 * gamma["prefill_gflops"] / matrix["matrix_rate_gflops"], 1)
    gaps = {}
    best = fairest_mtmd(ok)
    for peer, key in (("mtmd", best["setup"]), ("transformers", "transformers")):
        if gamma and key in ok:
            gaps[peer] = shortfall(gamma, ok[key], TARGETS[peer])
    preset = args.preset if not args.folder else args.folder.name
    result = {
        "format": RESULT_FORMAT, "command": _public(command, work, args.native),
        "folder": Path(spec["folder"]).name, "preset": preset,
        "work": {"songs": args.songs, "cli_songs": args.cli_songs, "transformers_songs": args.transformers_songs,
                 "seconds": args.seconds,
                 "questions": list(QUESTIONS), "answer_tokens": args.answer_tokens, "answer_schema": spec["schema"],
                 "threads": args.threads, "in_flight": args.in_flight, "formats": list(FORMATS),
                 "decoder": "F32 GGUF (gamma-rt's export, and llama.cpp's converter for mtmd); transformers "
                            "float32", "peer_ctx": spec["ctx"],
                 "kv_cache": {"gamma-rt": KV_CACHE_SAID[args.kv_cache],
                              "mtmd": "f16 with flash attention (llama-server's and llama-mtmd-cli's defaults: "
                                      "-ctk f16 -ctv f16 -fa auto, on for the CPU)",
                              "transformers": "float32 (its own cache)"},
                 "gamma_rt_libllama": libllama_said(args.native)},
        "songs_per_hour": rates,
        "ratios": ratios(rates), "fairest_mtmd": best, "shortfall": gaps,
        "matrix_rate": matrix, "gamma_rt_prefill_gflops": gamma and gamma["prefill_gflops"],
        "gamma_rt_prefill_pct_of_matrix_rate": prefill_share, "prefill_target_pct": 50,
        "systems": systems, "failed_systems": sorted(set(systems) - set(ok)),
        "llama_cpp": {"commit": spec["llama_source_commit"],
                      "conversion": spec["conversion"] and json.loads(json.dumps(spec["conversion"]).replace(
                          str(work), "WORK").replace(str(Path(spec["native"]).parent.parent), "NATIVE_ROOT"))},
        "load_average_before": before, "load_average_after": load_average(), "machine": describe(args.threads),
    }
    out = args.out or Path("bench/results") / f"peer_speed-{preset}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    write_json(out, result)
    if result["failed_systems"]:
        say(f"failed: {result['failed_systems']} (their errors are in the JSON)")
    say(f"songs/hour {rates}; ratios {result['ratios']}; prefill {prefill_share}% of matrix rate; wrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gamma_rt.bench.peer_speed", description=__doc__,
                                     epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="audioflamingo3", choices=("audioflamingo3", "musicflamingo"))
    parser.add_argument("--preset", default="small", help="gamma-rt init preset (default small)")
    parser.add_argument("--folder", type=Path, help="an existing flamingo folder instead of --family/--preset")
    parser.add_argument("--songs", type=int, default=8, help="songs in the library (default 8)")
    parser.add_argument("--cli-songs", type=int, default=1, help="songs llama-mtmd-cli runs (default 1: it is slow)")
    parser.add_argument("--transformers-songs", type=int, default=2,
                        help="songs transformers runs (default 2: it is slow)")
    parser.add_argument("--seconds", type=float, default=240.0, help="length of each song (default 240)")
    parser.add_argument("--answer-tokens", type=int, default=32, help="most tokens of an answer (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every system (default 2)")
    parser.add_argument("--in-flight", type=int, default=8, help="gamma-rt tag's songs in flight (default 8)")
    parser.add_argument("--transformers-batch", type=int, default=5,
                        help="questions per generate call (default 5: a song's questions in one batch)")
    parser.add_argument("--kv-cache", default="auto", choices=KV_CACHE_NAMES,
                        help="gamma-rt's KV cache (default auto: f32 on the F32 decoder, exact; f16 with flash "
                             "attention is what llama-server runs by default)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list from {','.join(SYSTEMS)}")
    parser.add_argument("--native", type=Path, default=Path("native-build/cpu/bin"),
                        help="native/build.sh's bin folder (llama-server, llama-mtmd-cli, llama-bench)")
    parser.add_argument("--work", type=Path, help="folder, bundle, GGUFs, library (kept; default: a new temp folder)")
    parser.add_argument("--out", type=Path, help="result JSON (default bench/results/peer_speed-<preset>-<stamp>.json)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one system in this process, JSON on stdout
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(CHILDREN[args.one](json.loads(args.spec.read_text()))))
        return 0
    for name in ("songs", "cli_songs", "transformers_songs", "threads", "in_flight", "transformers_batch"):
        if getattr(args, name) < (0 if name.endswith("_songs") else 1):
            raise SystemExit(f"peer_speed: error: --{name.replace('_', '-')} must be positive")
    if max(args.cli_songs, args.transformers_songs) > args.songs:
        raise SystemExit("peer_speed: error: --cli-songs and --transformers-songs must be at most --songs")
    return run_module("peer_speed", argv, lambda command: _bench(args, command))


if __name__ == "__main__":
    sys.exit(main())
