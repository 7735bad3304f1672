"""Nothing one request sends takes ``gamma-rt serve`` down (issue 23): a real ``gamma-rt serve`` subprocess on
127.0.0.1 (so a crash shows as a dead process, not a dead test run), the official openai client for requests
and raw sockets for slow clients.

Each test replays a reproduction: a schema whose grammar overflowed llama.cpp's parser (SIGSEGV), grammars
llama.cpp refused after the scheduler had taken a sequence (a leak, then a hang), an enum that held the
scheduler thread for a minute, a client that trickles its request head, a decoder that aborts llama.cpp.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="gamma-rt serve needs the serve extra")
import openai  # noqa: E402

from gamma_rt.bench.serve_load import ServedBundle  # noqa: E402
from gamma_rt.errors import PromptSetError  # noqa: E402
from gamma_rt.runtime.tagging.schema_grammar import BOUNDS, normalize_schema, to_gbnf  # noqa: E402
from gamma_rt.synth import Music, write  # noqa: E402

MODEL = "bench"  # ServedBundle's --model-name
LIMIT_S = 30  # every wait in this file gives up after this
PARALLEL = 2
HEADER_S, BODY_S, KEEP_ALIVE_S = 2.0, 3.0, 1.5  # the served bundle's --header-timeout, --body-timeout, --keep-alive


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    path = write(tmp_path_factory.mktemp("song") / "song.wav", Music(3.0, rate=16000, seed=0), subtype="PCM_16")
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def served(tiny_bundle):
    extra = ("--max-tokens", "64", "--header-timeout", str(HEADER_S), "--body-timeout", str(BODY_S),
             "--keep-alive", str(KEEP_ALIVE_S))
    with ServedBundle(tiny_bundle, parallel=PARALLEL, threads=1, extra=extra) as s:
        yield s


@pytest.fixture
def client(served):
    assert served.process.poll() is None, f"the server died earlier (exit {served.process.returncode})"
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key="none", max_retries=0, timeout=LIMIT_S)


def ask(client, song, schema=None, **kw):
    messages = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": song, "format": "wav"}},
                                             {"type": "text", "text": "What genre is this?"}]}]
    if schema is not None:
        kw["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    return client.chat.completions.create(model=MODEL, messages=messages, **{"max_tokens": 8, **kw})


def refused(client, song, schema) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, song, schema)
    return e.value


# --- schemas past what llama.cpp's grammar takes ----------------------------------------------------------


def test_a_string_schema_that_overflowed_llama_cpps_parser_is_a_400_and_the_server_lives(served, client, song):
    error = refused(client, song, {"type": "string", "maxLength": 20000})
    assert "maxLength: 20000 is more than 1000" in error.message
    assert error.body["param"] == "response_format.json_schema.schema"
    assert served.process.poll() is None, "the server died"
    assert ask(client, song).choices[0].finish_reason in ("stop", "length")


def test_grammars_llama_cpp_refuses_never_take_a_sequence_so_later_requests_are_answered(served, client, song):
    # maxLength 3000-10000: llama.cpp refused the grammar after admission, and each such request kept its
    # sequence and KV cells for good. Twice --parallel of them, at once, then a normal request.
    schemas = [{"type": "string", "maxLength": n} for n in (3000, 5000, 8000, 10000)][: 2 * PARALLEL]
    with ThreadPoolExecutor(len(schemas)) as pool:
        errors = list(pool.map(lambda s: refused(client, song, s), schemas))
    assert all("is more than 1000" in e.message for e in errors)
    reply = ask(client, song, max_tokens=4)
    assert reply.usage.completion_tokens > 0
    assert _in_flight(served) == 0


def test_a_hostile_enum_does_not_hold_a_concurrent_normal_request(served, client, song):
    # a 100,000-string enum took 76 s to build on the scheduler thread, and every running answer waited
    hostile = {"enum": [f"genre {i}" for i in range(100_000)]}
    started = time.monotonic()
    with ThreadPoolExecutor(3) as pool:
        bad = [pool.submit(refused, client, song, hostile) for _ in range(2)]
        good = pool.submit(ask, client, song, max_tokens=4)
        assert good.result().usage.completion_tokens > 0
        assert all("100000 strings; at most 256" in b.result().message for b in bad)
    assert time.monotonic() - started < LIMIT_S


def test_a_requests_tokens_and_grammar_are_made_on_the_submitting_thread_not_the_schedulers(tiny_bundle, tmp_path):
    # the scheduler thread steps every running answer; a request's own work there held them all up
    import queue

    from gamma_rt.runtime.engine.events import Done
    from gamma_rt.runtime.options import RuntimeOptions
    from gamma_rt.runtime.serve.chat_job import ChatJob
    from gamma_rt.runtime.serve.request_audio import open_request_audio
    from gamma_rt.runtime.serve.protocol import parse_chat_request
    from gamma_rt.runtime.serve.service import ServeOptions, Service

    wav = write(tmp_path / "song.wav", Music(3.0, rate=16000, seed=0), subtype="PCM_16")
    question = "Which genre, in a word?"
    schema = {"type": "object", "properties": {"genre": {"type": "string", "maxLength": 1000}}}
    options = ServeOptions(parallel=2, max_tokens=16, max_audio_seconds=10, model_name="tiny")
    with Service.open(tiny_bundle, RuntimeOptions(threads=1), options) as service:
        session, calls = service.pipeline.session, []
        for name in ("sampler", "tokenize"):
            def spy(*args, _real=getattr(session, name), _name=name, **kw):
                calls.append((_name, threading.current_thread().name, args[0]))
                return _real(*args, **kw)
            setattr(session, name, spy)
        body = {"model": "tiny", "max_tokens": 16, "response_format": {"type": "json_schema", "json_schema": {
            "name": "g", "schema": schema}}, "messages": [{"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav.read_bytes()).decode(),
                                                         "format": "wav"}},
                {"type": "text", "text": question}]}]}
        chat = parse_chat_request(body, "tiny", service.limits)
        events: queue.Queue = queue.Queue()
        audio = open_request_audio(chat.audio, service.sample_rate, service.limits)
        service.scheduler.submit(ChatJob(chat, audio, events.put, service.limits))
        while not isinstance(event := events.get(timeout=LIMIT_S), Done):
            assert not hasattr(event, "status"), event
    here = threading.current_thread().name
    assert [c[1] for c in calls if c[0] == "sampler"] == [here]
    asked = [c for c in calls if c[0] == "tokenize" and question in str(c[2])]
    assert asked and {c[1] for c in asked} == {here}


@pytest.mark.parametrize("schema, message", [
    ({"type": "array", "maxItems": 5000, "items": {"type": "integer"}}, "maxItems: 5000 is more than 1000"),
    ({"type": "string", "maxLength": 10, "minLength": 11}, "minLength: must be an integer from 0 to maxLength"),
    ({"type": "string", "maxLength": 10, "pattern": "(a|b)*"}, ".pattern: not supported in a string schema"),
    ({"type": "string", "maxLength": 10, "$ref": "https://127.0.0.1:9/x.json"}, ".$ref: not supported"),
    ({"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 1000} for i in range(80)}},
     "KiB of grammar"),
])
def test_schemas_past_the_bounds_are_a_400_naming_the_field(client, song, schema, message):
    assert message in refused(client, song, schema).message


def test_the_bounds_are_what_llama_cpp_takes_and_no_more(tiny_bundle):
    # the bounds' edge builds a grammar llama.cpp parses; one past it was what llama.cpp refused
    from gamma_rt.runtime.decoder import DecoderSession, Sampling

    edge = {"type": "object", "properties": {
        "text": {"type": "string", "maxLength": BOUNDS.max_length},
        "list": {"type": "array", "maxItems": BOUNDS.max_length, "items": {"type": "integer"}},
        "pick": {"enum": [f"{i:04d}" + "x" * (BOUNDS.max_chars - 4) for i in range(BOUNDS.max_enum)]}}}
    past = {"type": "string", "maxLength": BOUNDS.max_length + 1}
    with DecoderSession(tiny_bundle / "decoder-f32.gguf", n_ctx=256, n_threads=1) as session:
        session.free_sampler(session.sampler(Sampling(grammar=to_gbnf(normalize_schema(edge, "edge")))))
        with pytest.raises(PromptSetError, match=r"past\.maxLength"):
            normalize_schema(past, "past")
        unchecked = to_gbnf({**past}, "past")  # the converter itself has no bound: llama.cpp refuses it
        with pytest.raises(Exception, match="could not parse the GBNF grammar"):
            session.sampler(Sampling(grammar=unchecked))


def test_a_schema_nested_thousands_deep_is_refused_without_recursing_through_it():
    deep: dict = {"type": "string", "maxLength": 1}
    for _ in range(5000):
        deep = {"type": "array", "maxItems": 1, "items": deep}
    with pytest.raises(PromptSetError, match="nested more than 8 deep"):
        normalize_schema(deep, "deep")


def test_tag_refuses_an_unbounded_prompt_schema_with_one_line(tiny_bundle, tmp_path):
    # `gamma-rt tag --prompts` with this schema died of SIGSEGV (exit 139) on its first track
    library = tmp_path / "library"
    library.mkdir()
    write(library / "song.wav", Music(2.0, rate=16000, seed=0), subtype="PCM_16")
    prompts = tmp_path / "mine.toml"
    prompts.write_text('[[prompt]]\nname = "long"\nquestion = "Describe it."\n'
                       'schema = { type = "string", maxLength = 20000 }\n')
    run = subprocess.run([sys.executable, "-m", "gamma_rt.cli", "tag", str(library), "--bundle", str(tiny_bundle),
                          "--out", str(tmp_path / "out"), "--prompts", str(prompts), "--threads", "1", "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "prompt 'long'.schema.maxLength: 20000 is more than 1000" in run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr


# --- slow clients ---------------------------------------------------------------------------------------


class Trickle:
    """A raw connection to the server that sends ``first`` at once, then ``data`` one byte every ``gap``
    seconds, on a thread, until the server closes it; :meth:`outcome` is what the server sent and when."""

    def __init__(self, url: str, data: bytes, gap: float = 0.25, first: bytes = b""):
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=LIMIT_S)
        self.opened = time.monotonic()
        self.sock.sendall(first)
        self.data, self.gap = data, gap
        self.thread = threading.Thread(target=self._send, daemon=True)
        self.thread.start()

    def _send(self) -> None:
        try:
            for i in range(len(self.data)):
                self.sock.send(self.data[i:i + 1])
                time.sleep(self.gap)
        except OSError:  # the server closed it: what the test waits for
            pass

    def outcome(self) -> tuple[bytes, float]:
        """(bytes the server sent, seconds from connecting until it closed); socket.timeout past LIMIT_S."""
        received = b""
        while chunk := self.sock.recv(65536):
            received += chunk
        self.sock.close()
        return received, time.monotonic() - self.opened


HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize("first, data, deadline, flag", [
    (b"", HEAD + b"X-Slow: " + b"a" * 400, HEADER_S, b"--header-timeout"),
    (b"", b"", HEADER_S, b"--header-timeout"),
    (HEAD + b"Content-Length: 100000\r\n\r\n", b" " * 400, BODY_S, b"--body-timeout")],
    ids=["head a byte at a time", "nothing at all", "body a byte at a time"])
def test_a_slow_client_gets_408_at_its_deadline_while_others_are_answered(served, client, song, first, data,
                                                                          deadline, flag):
    # before, uvicorn kept such connections for good (it only times out idle ones after a response)
    slow = [Trickle(served.url, data, first=first) for _ in range(8)]
    assert ask(client, song).choices[0].finish_reason in ("stop", "length")
    for trickle in slow:
        received, closed_after = trickle.outcome()
        assert received.startswith(b"HTTP/1.1 408 ") and flag in received
        assert deadline * 0.9 <= closed_after < deadline + 10, "the trickle must not push the deadline on"
    assert served.process.poll() is None


def test_an_idle_connection_is_closed_keep_alive_seconds_after_its_answer(served):
    trickle = Trickle(served.url, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", gap=0)
    received, closed_after = trickle.outcome()
    assert received.startswith(b"HTTP/1.1 200 ") and received.count(b"HTTP/1.1") == 1
    assert KEEP_ALIVE_S * 0.9 <= closed_after < KEEP_ALIVE_S + 10


def test_a_body_trickled_after_its_answer_ends_at_the_body_deadline_without_a_408(served):
    # /health answers without reading the body it was promised; the trickle keeps keep-alive from closing it
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 400\r\n\r\n"
    trickle = Trickle(served.url, b" " * 400, first=head)
    received, closed_after = trickle.outcome()
    assert received.startswith(b"HTTP/1.1 200 ") and b" 408 " not in received
    assert BODY_S * 0.9 <= closed_after < BODY_S + 10


def test_a_request_split_across_slow_writes_within_the_deadlines_is_answered(served):
    # the deadlines bound the whole head and the whole body, not one write: a slow but honest client is served
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=LIMIT_S) as sock:
        for part in (head[:20], head[20:], body[:10], body[10:]):
            sock.sendall(part)
            time.sleep(0.4)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 400 ") and b"audio" in received  # answered: no audio part, a 400


# --- a decoder llama.cpp loads but cannot run -------------------------------------------------------------


def test_serve_refuses_to_start_on_a_decoder_llama_cpp_aborts_on(tiny_bundle, tmp_path):
    # rms epsilon NaN: check_gguf passed it, llama.cpp loaded it, /health said ok, and the first request's
    # decode hit GGML_ASSERT(eps >= 0.0f): SIGABRT, the server gone. check_gguf refuses it now too (in the
    # warm-up's child); what the warm-up does with a real crash is the test below
    import gguf

    from gamma_rt.hashing import sha256_file

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    reader = gguf.GGUFReader(bundle / "decoder-f32.gguf", "r+")
    field = reader.fields["qwen3.attention.layer_norm_rms_epsilon"]
    field.parts[field.data[0]][0] = float("nan")
    reader.data.flush()
    del reader
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["components"]["decoder"]["sha256"] = sha256_file(bundle / "decoder-f32.gguf")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    command = [sys.executable, "-m", "gamma_rt.cli", "serve", str(bundle), "--port", "0", "--threads", "1"]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        err = server.stderr.readline()  # the first line: an error, or the server saying what it serves
        started = err.startswith("gamma-rt serve:")
        if not started:
            err += server.stderr.read()
            server.wait(timeout=LIMIT_S)
    finally:
        server.kill()
        server.wait()
    assert not started and server.returncode == 2, f"the server started: {err}"
    assert err.count("\n") == 1 and "Traceback" not in err and "decoder-f32.gguf" in err, err


def test_the_warm_up_names_the_signal_and_ggmls_assert_of_a_child_that_crashed():
    # what a llama.cpp abort looks like from outside: ggml prints its assert, then abort() (SIGABRT)
    from gamma_rt.runtime.serve.warmup import child_failure

    crash = ("import os, sys; sys.stderr.write('loading\\nops.cpp:4132: GGML_ASSERT(eps >= 0.0f) failed\\n'); "
             "sys.stderr.flush(); os.abort()")
    said = child_failure([sys.executable, "-c", crash], LIMIT_S)
    assert said == "llama.cpp crashed (SIGABRT: GGML_ASSERT(eps >= 0.0f) failed)"
    said = child_failure([sys.executable, "-c", "import os; os.kill(os.getpid(), 11)"], LIMIT_S)
    assert said == "llama.cpp crashed (SIGSEGV)"
    assert child_failure([sys.executable, "-c", "import time; time.sleep(60)"], 1) == "it did not finish in 1 s"
    assert child_failure([sys.executable, "-c", "pass"], LIMIT_S) is None


def _in_flight(served) -> int:
    import httpx

    return httpx.get(f"{served.url}/health", timeout=LIMIT_S).json()["in_flight"]
