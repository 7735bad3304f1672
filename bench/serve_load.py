"""``gamma-rt bench serve URL|BUNDLE``: load a gamma-rt server (or any OpenAI-compatible one) with concurrent
clients, the official ``openai`` Python client each, and measure what its users see.

One run sends the same M requests twice: one at a time (``sequential``), then from N concurrent clients
(``concurrent``), and reports for each time to first token and end-to-end latency (p50/p95/p99), tokens/s,
requests/s and errors; whether the two runs gave the same answers; and the server's RSS over time, read from
its /metrics (``process_resident_memory_bytes``). A BUNDLE is served by a ``gamma-rt serve`` subprocess on
127.0.0.1 (a free port) for the run. ``--bad-fraction`` mixes in hostile requests (bad base64, undecodable
audio, an unknown format) that must get 4xx, for a soak. Result: JSON in --out with a PNG beside it.
"""

from __future__ import annotations

import base64
import io
import math
import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .entry import write_json

RESULT_FORMAT = "gamma-rt-bench-serve/1"
QUESTIONS = ["What genre is this?", "Which instruments play?", "What is the tempo?", "Describe the mood.",
             "Is there a singer?"]
BAD_KINDS = ("bad_base64", "undecodable_audio", "unknown_format")
START_TIMEOUT_S = 180
REQUEST_TIMEOUT_S = 600

EPILOG = """\
gamma-rt bench serve URL|BUNDLE: load test a server with --clients concurrent openai clients
  The same --requests requests run one at a time, then concurrently; p50/p95/p99 time to first token and
  end-to-end latency, tokens/s, requests/s, errors, same answers or not, and the server's RSS over time.
  A BUNDLE is served by `gamma-rt serve` on 127.0.0.1 for the run (--parallel = --clients).

  gamma-rt bench serve bundle --clients 8 --requests 50 --audio-seconds 10 30 --answer-tokens 32
  gamma-rt bench serve http://127.0.0.1:8080 --clients 4 --requests 2000 --bad-fraction 0.3 --no-sequential
"""


def add_arguments(p) -> None:
    """The ``bench serve`` flags, on the bench parser (its positional BUNDLE is then the word serve)."""
    p.epilog = EPILOG
    p.add_argument("target", nargs="?", metavar="URL|BUNDLE", help="with `bench serve`: the server's base URL, "
                   "or a bundle to serve for the run")
    g = p.add_argument_group("bench serve (gamma-rt bench serve URL|BUNDLE)")
    g.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    g.add_argument("--requests", type=int, default=50, help="requests per run (default 50)")
    g.add_argument("--audio-seconds", type=float, nargs="+", default=[10.0], metavar="S",
                   help="audio lengths, used in turn (default 10)")
    g.add_argument("--answer-tokens", type=int, default=32, help="max_tokens of every request (default 32)")
    g.add_argument("--bad-fraction", type=float, default=0.0, metavar="F",
                   help="share of hostile requests, which must get 4xx (default 0)")
    g.add_argument("--no-sequential", action="store_true", help="skip the one-at-a-time run")


@dataclass(frozen=True)
class LoadOptions:
    target: str
    clients: int = 8
    requests: int = 50
    audio_seconds: tuple[float, ...] = (10.0,)
    answer_tokens: int = 32
    bad_fraction: float = 0.0
    sequential: bool = True
    warmup: int = 1  # untimed requests per client before each run
    threads: int = 2  # the served bundle's --threads
    server_args: tuple[str, ...] = ()  # more `gamma-rt serve` flags for a BUNDLE target


@dataclass
class Outcome:
    """One request as its client saw it (seconds from the run's start)."""

    index: int
    kind: str  # "good" or one of BAD_KINDS
    start_s: float
    ttft_s: float | None = None
    e2e_s: float | None = None
    tokens: int = 0
    text: str = ""
    token_bytes: tuple[bytes, ...] = ()  # each answer token's bytes (logprobs), printable or not
    status: int = 200
    error: str | None = None


# --- the requests ---------------------------------------------------------------------------------------


def make_songs(lengths: tuple[float, ...], variants: int = 3) -> list[tuple[float, str]]:
    """(seconds, base64 WAV) of synthesized music: ``variants`` songs per length."""
    import soundfile as sf

    from gamma_rt.synth import Music, synthesize

    songs = []
    for seconds in lengths:
        for seed in range(variants):
            buf = io.BytesIO()
            sf.write(buf, synthesize(Music(seconds, rate=16000, seed=seed)), 16000, format="WAV", subtype="PCM_16")
            songs.append((seconds, base64.b64encode(buf.getvalue()).decode()))
    return songs


def request_kind(index: int, bad_fraction: float) -> str:
    """Every request's kind is fixed by its index, so both runs send the same ones."""
    if bad_fraction <= 0 or (index * 0.6180339887) % 1.0 >= bad_fraction:
        return "good"
    return BAD_KINDS[index % len(BAD_KINDS)]


def messages(index: int, kind: str, songs: list[tuple[float, str]]) -> list[dict]:
    seconds, data = songs[index % len(songs)]
    fmt = "wav"
    if kind == "bad_base64":
        data = "not*base64!" + data[:64]
    elif kind == "undecodable_audio":
        data = base64.b64encode(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4).decode()
    elif kind == "unknown_format":
        fmt = "xyz"
    return [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": data, "format": fmt}},
                                         {"type": "text", "text": QUESTIONS[index % len(QUESTIONS)]}]}]


def send(client, model: str, index: int, kind: str, songs, answer_tokens: int, t0: float) -> Outcome:
    """One streamed request; TTFT is taken at the first chunk (the server sends it with the first token)."""
    import openai

    out = Outcome(index, kind, time.perf_counter() - t0)
    start = time.perf_counter()
    pieces, tokens = [], []
    try:
        stream = client.chat.completions.create(
            model=model, messages=messages(index, kind, songs), max_tokens=answer_tokens, temperature=0.9,
            seed=index, stream=True, stream_options={"include_usage": True}, logprobs=True)
        for chunk in stream:
            if out.ttft_s is None:
                out.ttft_s = time.perf_counter() - start
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
                tokens += [bytes(e.bytes) for e in chunk.choices[0].logprobs.content]
            if chunk.usage is not None:
                out.tokens = chunk.usage.completion_tokens
    except openai.APIStatusError as e:
        out.status, out.error = e.status_code, str(e)[:200]
    except openai.APIError as e:  # connection refused, reset, timeout
        out.status, out.error = 0, f"{type(e).__name__}: {str(e)[:200]}"
    out.e2e_s = time.perf_counter() - start
    out.text, out.token_bytes = "".join(pieces), tuple(tokens)
    return out


def run_load(url: str, model: str, options: LoadOptions, songs, concurrency: int) -> tuple[list[Outcome], float]:
    """Send the M requests from ``concurrency`` client threads, each warmed up first; (outcomes by index, wall
    seconds from when every client was warm)."""
    import openai

    todo = list(range(options.requests))
    lock = threading.Lock()
    outcomes: list[Outcome | None] = [None] * options.requests
    warm = threading.Barrier(concurrency + 1)
    start = [0.0]

    def client_loop() -> None:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=REQUEST_TIMEOUT_S)
        for w in range(options.warmup):
            send(client, model, options.requests + w, "good", songs, options.answer_tokens, 0.0)
        try:
            warm.wait()
        except threading.BrokenBarrierError:  # the run gave up waiting for the warm-up (below)
            return
        while True:
            with lock:
                if not todo:
                    return
                index = todo.pop(0)
            outcomes[index] = send(client, model, index, request_kind(index, options.bad_fraction), songs,
                                   options.answer_tokens, start[0])

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    # each warm-up request ends within REQUEST_TIMEOUT_S (answered, refused or timed out), so this bounds it
    limit = options.warmup * REQUEST_TIMEOUT_S + 60
    try:
        warm.wait(timeout=limit)
    except threading.BrokenBarrierError:
        from gamma_rt.errors import GammaError

        warm.abort()
        raise GammaError(f"the {concurrency} clients' warm-up ({options.warmup} request(s) each) did not finish in "
                         f"{limit} s: the server is too slow for this load or stopped answering; try fewer "
                         "--clients or --answer-tokens") from None
    start[0] = time.perf_counter()
    for t in threads:
        t.join()
    return outcomes, time.perf_counter() - start[0]


# --- the server -----------------------------------------------------------------------------------------


def _metric(url: str, name: str) -> float:
    """Sum of a metric's samples on the server's /metrics (-1 when there is no /metrics)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)
    except (httpx.HTTPError, ValueError):
        return -1.0


class RssWatch:
    """The server's RSS (MiB) every ``interval`` seconds, from its /metrics, in a thread."""

    def __init__(self, url: str, interval: float = 0.5):
        self.url, self.interval = url, interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> "RssWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def mark(self) -> float:
        return time.perf_counter() - self._t0

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            rss = _metric(self.url, "process_resident_memory_bytes")
            if rss > 0:
                self.samples.append((round(self.mark(), 2), round(rss / 2**20, 1)))


class ServedBundle:
    """``gamma-rt serve BUNDLE`` on 127.0.0.1 at a free port, for the length of a ``with``."""

    def __init__(self, bundle: Path, parallel: int, threads: int, extra: tuple[str, ...] = ()):
        self.command = [sys.executable, "-m", "gamma_rt.cli", "serve", str(bundle), "--port", "0",
                        "--parallel", str(parallel), "--threads", str(threads), "--model-name", "bench", *extra]

    def __enter__(self) -> "ServedBundle":
        self.process = subprocess.Popen(self.command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        lines = []
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                break
            lines.append(line.rstrip())
            found = re.search(r"listening on (http://\S+)", line)
            if found:
                self.url = found.group(1)
                threading.Thread(target=self.process.stderr.read, daemon=True).start()  # keep the pipe drained
                return self
        self.process.kill()
        from gamma_rt.errors import GammaError

        raise GammaError(f"gamma-rt serve did not start: {' | '.join(lines[-3:]) or 'no output'}")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


# --- figures --------------------------------------------------------------------------------------------


def percentiles(values: list[float]) -> dict | None:
    """p50/p95/p99 (nearest rank) and the mean, in ms; None for no values."""
    if not values:
        return None
    s = sorted(values)
    rank = lambda q: s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]  # noqa: E731
    return {"p50": round(rank(0.50) * 1e3, 2), "p95": round(rank(0.95) * 1e3, 2), "p99": round(rank(0.99) * 1e3, 2),
            "mean": round(sum(s) / len(s) * 1e3, 2)}


def summarize(outcomes: list[Outcome], wall_s: float, concurrency: int) -> dict:
    good = [o for o in outcomes if o.kind == "good" and o.status == 200]
    bad = [o for o in outcomes if o.kind != "good"]
    tokens = sum(o.tokens for o in good)
    return {
        "concurrency": concurrency, "requests": len(outcomes), "wall_s": round(wall_s, 3),
        "requests_per_s": round(len(outcomes) / wall_s, 3), "tokens_per_s": round(tokens / wall_s, 2),
        "completion_tokens": tokens,
        "ttft_ms": percentiles([o.ttft_s for o in good if o.ttft_s is not None]),
        "e2e_ms": percentiles([o.e2e_s for o in good]),
        "errors": sum(1 for o in outcomes if o.kind == "good" and o.status != 200),
        "server_errors_5xx": sum(1 for o in outcomes if o.status >= 500 or o.status == 0),
        "hostile": len(bad), "hostile_answered_4xx": sum(1 for o in bad if 400 <= o.status < 500),
        "error_samples": sorted({o.error for o in outcomes if o.error and o.kind == "good"})[:5],
        "per_request": [{"index": o.index, "kind": o.kind, "status": o.status, "start_s": round(o.start_s, 3),
                         "ttft_ms": None if o.ttft_s is None else round(o.ttft_s * 1e3, 2),
                         "e2e_ms": round(o.e2e_s * 1e3, 2), "tokens": o.tokens} for o in outcomes],
    }


def rss_figures(samples: list[tuple[float, float]], warm_at: float) -> dict:
    """RSS after warm-up vs at the end: ``growth_pct`` is the mean of the last quarter over the first quarter."""
    after = [mib for t, mib in samples if t >= warm_at]
    if len(after) < 4:
        return {"samples": samples, "growth_pct": None}
    q = max(1, len(after) // 4)
    first, last = sum(after[:q]) / q, sum(after[-q:]) / q
    return {"samples": samples, "peak_mib": max(after), "first_quarter_mib": round(first, 1),
            "last_quarter_mib": round(last, 1), "growth_pct": round((last / first - 1) * 100, 2)}


# --- the run --------------------------------------------------------------------------------------------


def run(options: LoadOptions, url: str) -> dict:
    import httpx

    from gamma_rt.machine import describe

    model = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
    songs = make_songs(options.audio_seconds)
    runs, answers = {}, {}
    with RssWatch(url) as rss:
        warm_at = None
        for name, concurrency in (("sequential", 1), ("concurrent", options.clients)):
            if name == "sequential" and not options.sequential:
                continue
            outcomes, wall = run_load(url, model, options, songs, concurrency)
            warm_at = rss.mark() - wall  # the last run's start: RSS is judged within the concurrent run
            runs[name] = summarize(outcomes, wall, concurrency)
            answers[name] = {o.index: (o.text, o.token_bytes) for o in outcomes if o.kind == "good" and o.status == 200}
        time.sleep(2 * rss.interval)
    result = {"format": RESULT_FORMAT, "machine": describe(options.threads), "target": options.target,
              "model": model, "inputs": {k: v for k, v in asdict(options).items() if k != "target"}, "runs": runs,
              "rss_mib": rss_figures(rss.samples, warm_at or 0.0)}
    if "sequential" in answers:
        seq, con = answers["sequential"], answers["concurrent"]
        both = sorted(set(seq) & set(con))
        # token for token: the bytes of every answer token (a random model's tokens often print as nothing)
        result["same_answers"] = {"compared": len(both), "different": sum(1 for i in both if seq[i] != con[i]),
                                  "tokens_compared": sum(len(seq[i][1]) for i in both),
                                  "empty_texts": sum(1 for i in both if not seq[i][0])}
        result["throughput_ratio"] = round(runs["concurrent"]["requests_per_s"] / runs["sequential"]["requests_per_s"], 3)
    return result


def measure(options: LoadOptions) -> dict:
    """Run against a URL, or serve a BUNDLE for the run."""
    if re.match(r"https?://", options.target):
        return run(options, options.target.rstrip("/"))
    bundle = Path(options.target)
    from gamma_rt.errors import GammaError

    if not (bundle / "manifest.json").is_file():
        raise GammaError(f"{bundle}: neither a URL nor a bundle folder (no manifest.json)")
    with ServedBundle(bundle, options.clients, options.threads, options.server_args) as served:
        result = run(options, served.url)
    result["target"] = bundle.resolve().name  # the bundle by its folder's name: no path of this machine
    return result


def write_result(result: dict, folder: Path) -> tuple[Path, Path]:
    """The JSON and its plot: latency per request in both runs, and the server's RSS over time."""
    folder.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(result["target"].rstrip("/")).name or "server")
    stem = f"serve-{name}-{time.strftime('%Y%m%dT%H%M%S')}"
    path = write_json(folder / f"{stem}.json", result)
    return path, plot(result, folder / f"{stem}.png")


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, mem) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = list(result["runs"])
    group = 2 * len(names) + 1  # bars per percentile: TTFT then end to end for each run, and a gap
    for k, (key, hatch) in enumerate((("ttft_ms", ""), ("e2e_ms", "//"))):
        for i, name in enumerate(names):
            stats = result["runs"][name][key] or {}
            xs = [j * group + k * len(names) + i for j in range(3)]
            lat.bar(xs, [stats.get(p, 0) for p in ("p50", "p95", "p99")], width=0.9, hatch=hatch, alpha=0.8,
                    label=f"{name} (c={result['runs'][name]['concurrency']}) {key[:-3]}")
    lat.set_xticks([j * group + (group - 2) / 2 for j in range(3)], ["p50", "p95", "p99"])
    lat.set_ylabel("ms")
    lat.set_title("latency per request")
    lat.legend(fontsize=7)
    samples = result["rss_mib"]["samples"]
    mem.plot([t for t, _ in samples], [m for _, m in samples])
    mem.set_xlabel("s")
    mem.set_ylabel("server RSS, MiB")
    mem.set_title("server memory over the run")
    fig.suptitle(f"gamma-rt bench serve: {result['model']}, {result['inputs']['requests']} requests")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def summary(result: dict) -> str:
    lines = []
    for name, r in result["runs"].items():
        ttft, e2e = r["ttft_ms"] or {}, r["e2e_ms"] or {}
        lines.append(f"{name:>10} c={r['concurrency']}: {r['requests_per_s']:.2f} req/s, {r['tokens_per_s']:.1f} "
                     f"tok/s, TTFT p50/p95/p99 {ttft.get('p50')}/{ttft.get('p95')}/{ttft.get('p99')} ms, e2e "
                     f"p50/p95/p99 {e2e.get('p50')}/{e2e.get('p95')}/{e2e.get('p99')} ms, errors {r['errors']}, "
                     f"5xx {r['server_errors_5xx']}, hostile 4xx {r['hostile_answered_4xx']}/{r['hostile']}")
    if "same_answers" in result:
        s = result["same_answers"]
        lines.append(f"same answers, token for token: {s['compared'] - s['different']}/{s['compared']} "
                     f"({s['tokens_compared']} tokens); throughput "
                     f"x{result['throughput_ratio']} at c={result['runs']['concurrent']['concurrency']}")
    lines.append(f"server RSS growth after warm-up: {result['rss_mib'].get('growth_pct')} %")
    return "\n".join(lines)


def served_limits(args) -> tuple[str, ...]:
    """A served BUNDLE's limits fitted to the load: its KV cache then holds what the requests need, not
    --parallel requests of 300 s (14 GiB for 8 sequences of the small preset's F32 decoder)."""
    return ("--max-tokens", str(max(args.answer_tokens, 16)), "--max-audio-seconds", f"{max(args.audio_seconds):g}")


def runtime_flags(args) -> list[str]:
    """The runtime options given on the command line that a served BUNDLE takes (--decoder decoder.f16, ...);
    GammaError for a URL target, whose server runs what it was started with."""
    from gamma_rt.errors import GammaError

    flags = [(f"--{name.replace('_', '-')}", getattr(args, name)) for name in ("decoder", "backend", "precision")
             if getattr(args, name) != "auto"]
    if args.gpu_layers is not None:
        flags.append(("--gpu-layers", args.gpu_layers))
    if flags and re.match(r"https?://", args.target):
        raise GammaError(f"{flags[0][0]} applies to a BUNDLE target; the server at {args.target} runs what it "
                         "was started with")
    return [str(x) for flag in flags for x in flag]


def cmd_bench_serve(args) -> int:
    from gamma_rt.errors import GammaError

    if not args.target:
        raise GammaError("bench serve needs a target: gamma-rt bench serve URL|BUNDLE")
    for name in ("clients", "requests", "answer_tokens"):
        if getattr(args, name) < 1:
            raise GammaError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.bad_fraction < 1:
        raise GammaError(f"--bad-fraction must be in [0, 1), got {args.bad_fraction}")
    options = LoadOptions(args.target, args.clients, args.requests, tuple(args.audio_seconds), args.answer_tokens,
                          args.bad_fraction, not args.no_sequential, args.warmup, args.threads or 2,
                          served_limits(args) + tuple(runtime_flags(args)))
    result = measure(options)
    path, png = write_result(result, args.out)
    print(summary(result))
    print(f"wrote {path}, {png.name}")
    return 0
