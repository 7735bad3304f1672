"""gamma-rt serve end to end: the real app on uvicorn on 127.0.0.1 (a free port), the tiny bundle, the official
openai client for what a user does and raw HTTP (httpx, sockets) for what a hostile client does.

Answers are compared with a seeded temperature (the tiny random model's greedy text repeats one token), so any
difference in the prompt, the audio or the batching would change the text.
"""

from __future__ import annotations

import base64
import io
import json
import math
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="gamma-rt serve needs the serve extra")
import httpx  # noqa: E402
import openai  # noqa: E402
import uvicorn  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from gamma_rt.errors import AudioError  # noqa: E402
from gamma_rt.runtime.audio import open_audio  # noqa: E402
from gamma_rt.runtime.decoder import Sampling  # noqa: E402
from gamma_rt.runtime.options import RuntimeOptions  # noqa: E402
from gamma_rt.runtime.pipeline import Pipeline  # noqa: E402
from gamma_rt.runtime.serve.app import create_app  # noqa: E402
from gamma_rt.runtime.serve.service import ServeOptions, Service  # noqa: E402
from gamma_rt.synth import Music, write  # noqa: E402

MODEL = "tiny"
SEEDED = {"temperature": 0.9, "seed": 7}
QUESTION = "What genre is this?"
LIMIT_S = 30  # every wait in this file gives up after this


class ServerThread:
    """uvicorn serving ``service`` on 127.0.0.1 at a free port, in a thread of this process."""

    def __init__(self, service: Service):
        self.service = service
        sock = socket.create_server(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + LIMIT_S
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(LIMIT_S)
        self.service.close()


@pytest.fixture(scope="module")
def songs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("songs")
    return {name: write(folder / f"{name}.wav", Music(seconds, rate=16000, seed=seed), subtype="PCM_16")
            for name, seconds, seed in [("short", 4.0, 0), ("other", 3.0, 1), ("cached", 3.0, 2),
                                        ("long", 40.0, 3), ("long2", 40.0, 4), ("long3", 40.0, 5),
                                        ("too_long", 65.0, 6)]}


@pytest.fixture(scope="module")
def server(tiny_bundle, songs, tmp_path_factory):
    options = ServeOptions(parallel=2, max_queue=1, max_tokens=4096, max_audio_seconds=60, max_body_bytes=4 * 2**20,
                           local_files=songs["short"].parent, model_name=MODEL)
    runtime = RuntimeOptions(threads=1, cache_dir=tmp_path_factory.mktemp("cache"))
    s = ServerThread(Service.open(tiny_bundle, runtime, options))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=LIMIT_S)


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    with Pipeline.open(tiny_bundle, threads=1) as p:
        yield p


def audio_part(path, fmt="wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(path.read_bytes()).decode(), "format": fmt}}


def ask(client, song, question=QUESTION, **kw):
    messages = [{"role": "user", "content": [audio_part(song), {"type": "text", "text": question}]}]
    return client.chat.completions.create(model=MODEL, messages=messages, **{"max_tokens": 24, **kw})


def body(song, question=QUESTION, **kw) -> dict:
    return {"model": MODEL, "max_tokens": 8,
            "messages": [{"role": "user", "content": [audio_part(song), {"type": "text", "text": question}]}], **kw}


def metric(server, name: str, **labels) -> float:
    """A sample's value from /metrics, parsed with prometheus_client's own parser (0 when absent)."""
    text = httpx.get(f"{server.url}/metrics", timeout=LIMIT_S).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + LIMIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def in_flight(server) -> int:
    return httpx.get(f"{server.url}/health", timeout=LIMIT_S).json()["in_flight"]


# --- what a user sees ---------------------------------------------------------------------------------


def test_answer_equals_the_pipelines_answer_for_the_same_audio_and_question(client, pipe, songs):
    reply = ask(client, songs["short"], **SEEDED)
    expected = pipe.ask(songs["short"], QUESTION, Sampling(temperature=0.9, seed=7), max_tokens=24)[0]
    assert reply.choices[0].message.content == expected.text
    assert reply.usage.completion_tokens == len(expected.tokens)
    assert reply.choices[0].finish_reason == ("length" if len(expected.tokens) == 24 else "stop")
    assert reply.model == MODEL and reply.id.startswith("chatcmpl-")


def test_streamed_chunks_join_to_the_whole_answer(client, songs):
    whole = ask(client, songs["short"], **SEEDED).choices[0].message.content
    stream = ask(client, songs["short"], stream=True, stream_options={"include_usage": True}, **SEEDED)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens > 0 and not chunks[-1].choices


def test_logprobs_carry_each_answer_tokens_bytes_and_log_probability(client, pipe, songs):
    reply = ask(client, songs["short"], logprobs=True, top_logprobs=3)  # greedy
    expected = pipe.ask(songs["short"], QUESTION, Sampling(), max_tokens=24)[0]
    entries = reply.choices[0].logprobs.content
    assert len(entries) == reply.usage.completion_tokens == len(expected.tokens)
    # the tokens' own bytes, even where a token is part of a UTF-8 character or prints as nothing
    assert [bytes(e.bytes) for e in entries] == [pipe.session.token_bytes(t) for t in expected.tokens]
    for e in entries:
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and sum(math.exp(t) for t in tops) <= 1 + 1e-9
        assert e.logprob <= 0 and e.logprob == tops[0] and e.bytes == e.top_logprobs[0].bytes  # greedy: the top one
    stream = ask(client, songs["short"], logprobs=True, top_logprobs=3, stream=True)
    streamed = [e for c in stream if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.bytes, e.logprob) for e in streamed] == [(e.bytes, e.logprob) for e in entries]
    assert ask(client, songs["short"]).choices[0].logprobs is None  # not asked: none


def test_stream_ends_with_done_in_openais_sse_format(server, songs):
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body(songs["short"], stream=True),
                      timeout=LIMIT_S) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_concurrent_requests_give_the_answers_they_give_one_at_a_time(client, songs):
    # three requests on two sequences: two decode together, the third joins when one is done
    jobs = [(songs["short"], "What genre is this?", 7), (songs["other"], "Which instruments play?", 3),
            (songs["short"], "What is the tempo?", 11)]

    def run(job):
        song, question, seed = job
        return ask(client, song, question, temperature=0.9, seed=seed, max_tokens=32).choices[0].message.content

    sequential = [run(job) for job in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        concurrent = list(pool.map(run, jobs))
    assert concurrent == sequential
    assert len(set(sequential)) == len(jobs)  # the seeds and questions do make them differ


def test_json_schema_response_format_gives_json_that_parses(client, songs):
    schema = {"type": "object", "properties": {"genre": {"type": "string", "maxLength": 12},
                                               "tempo": {"type": "integer"}}}
    reply = ask(client, songs["short"], max_tokens=200, **SEEDED,
                response_format={"type": "json_schema", "json_schema": {"name": "tags", "schema": schema}})
    value = json.loads(reply.choices[0].message.content)
    assert set(value) == {"genre", "tempo"} and isinstance(value["tempo"], int)


def test_a_follow_up_turn_continues_the_conversation_on_the_same_audio(client, pipe, songs):
    first = ask(client, songs["short"], max_tokens=8).choices[0].message.content
    messages = [{"role": "user", "content": [audio_part(songs["short"]), {"type": "text", "text": QUESTION}]},
                {"role": "assistant", "content": first},
                {"role": "user", "content": "And the tempo?"}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, **SEEDED)
    talk = pipe.conversation(songs["short"])
    assert talk.ask(QUESTION, max_tokens=8) == first
    assert reply.choices[0].message.content == talk.ask("And the tempo?", Sampling(temperature=0.9, seed=7), 8)


def test_audio_url_reads_a_local_file_under_the_allowed_folder(client, songs):
    by_value = ask(client, songs["short"], **SEEDED).choices[0].message.content
    messages = [{"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": songs["short"].as_uri()}},
                                             {"type": "text", "text": QUESTION}]}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, **SEEDED)
    assert reply.choices[0].message.content == by_value


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


def test_metrics_parse_and_count_requests_tokens_and_latency(server, client, songs):
    code = {"endpoint": "/v1/chat/completions", "code": "200"}
    before = metric(server, "gamma_rt_requests_total", **code)
    ttft = metric(server, "gamma_rt_time_to_first_token_seconds_count")
    tokens = metric(server, "gamma_rt_generated_tokens_total")
    reply = ask(client, songs["other"], **SEEDED)
    assert metric(server, "gamma_rt_requests_total", **code) == before + 1
    assert metric(server, "gamma_rt_time_to_first_token_seconds_count") == ttft + 1
    assert metric(server, "gamma_rt_generated_tokens_total") == tokens + reply.usage.completion_tokens
    assert metric(server, "gamma_rt_audio_seconds_total") > 0
    assert metric(server, "process_resident_memory_bytes") > 0


def test_the_cache_makes_a_second_request_skip_the_encoders(server, client, songs):
    encoded = metric(server, "gamma_rt_audio_windows_total", source="encoder")
    cached = metric(server, "gamma_rt_audio_windows_total", source="cache")
    first = ask(client, songs["cached"], **SEEDED).choices[0].message.content
    assert metric(server, "gamma_rt_audio_windows_total", source="encoder") == encoded + 1
    second = ask(client, songs["cached"], **SEEDED).choices[0].message.content
    assert metric(server, "gamma_rt_audio_windows_total", source="encoder") == encoded + 1
    assert metric(server, "gamma_rt_audio_windows_total", source="cache") == cached + 1
    assert second == first


# --- load, disconnects ----------------------------------------------------------------------------------


def test_a_full_queue_answers_429_with_retry_after(server, songs):
    # 2 sequences + 1 waiting fill this server; three 40 s songs keep it busy while the fourth arrives
    with ThreadPoolExecutor(3) as pool:
        busy = [pool.submit(httpx.post, f"{server.url}/v1/chat/completions", json=body(songs[name]),
                            timeout=LIMIT_S) for name in ("long", "long2", "long3")]
        wait_until(lambda: in_flight(server) == 3, "three requests in flight")
        r = httpx.post(f"{server.url}/v1/chat/completions", json=body(songs["short"]), timeout=LIMIT_S)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["type"] == "rate_limit_error"
        assert [f.result().status_code for f in busy] == [200, 200, 200]


def test_a_client_that_disconnects_is_cancelled_and_the_server_goes_on(server, client, songs):
    cancelled = metric(server, "gamma_rt_cancelled_requests_total")
    payload = json.dumps(body(songs["long"], stream=True, max_tokens=4000, temperature=0)).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=LIMIT_S) as sock:
        sock.sendall(head + payload)
        wait_until(lambda: in_flight(server) == 1, "the request to be queued")
    # gone while its audio was being encoded: the scheduler drops it and frees its sequence
    wait_until(lambda: metric(server, "gamma_rt_cancelled_requests_total") == cancelled + 1, "the cancellation")
    wait_until(lambda: in_flight(server) == 0, "the sequence to be freed")
    assert ask(client, songs["other"], **SEEDED).choices[0].message.content


def test_a_client_that_disconnects_mid_stream_frees_its_sequence(server, client, songs):
    cancelled = metric(server, "gamma_rt_cancelled_requests_total")
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", timeout=LIMIT_S,
                      json=body(songs["short"], stream=True, max_tokens=4000, temperature=0)) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")  # the answer has started; now hang up
    wait_until(lambda: in_flight(server) == 0, "the sequence to be freed")
    assert metric(server, "gamma_rt_cancelled_requests_total") == cancelled + 1
    t0 = time.perf_counter()
    assert ask(client, songs["other"], **SEEDED).choices[0].message.content
    assert time.perf_counter() - t0 < LIMIT_S


# --- what a hostile client sends ------------------------------------------------------------------------


def post(server, content=None, **kw) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", content=content, timeout=LIMIT_S, **kw)


def error_of(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and "\n" not in error["message"]
    return error["message"]


def test_bad_json_is_400(server):
    assert "not valid JSON" in error_of(post(server, b'{"model": "tiny", "messages": ['), 400)
    assert "JSON object" in error_of(post(server, b"[1, 2]"), 400)
    assert error_of(post(server, b"\xff\xfe garbage"), 400)


def test_a_body_past_the_limit_is_413(server):
    assert "--max-body-mb" in error_of(post(server, b"x" * (4 * 2**20 + 1)), 413)


def test_bad_base64_is_400_naming_the_field(server, songs):
    request = body(songs["short"])
    request["messages"][0]["content"][0]["input_audio"]["data"] = "not*base64!"
    message = error_of(post(server, json=request), 400)
    assert message == "messages[0].content[0].input_audio.data: not valid base64"


def test_undecodable_audio_is_400_with_the_clis_message(server, songs):
    junk = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 8
    request = body(songs["short"])
    request["messages"][0]["content"][0]["input_audio"]["data"] = base64.b64encode(junk).decode()
    stream = io.BytesIO(junk)
    stream.name = "messages[0].content[0].input_audio"
    with pytest.raises(AudioError) as cli:
        with open_audio(stream) as audio:
            list(audio)
    assert error_of(post(server, json=request), 400) == str(cli.value)


def test_unknown_audio_format_is_400(server, songs):
    request = body(songs["short"])
    request["messages"][0]["content"][0]["input_audio"]["format"] = "xyz"
    assert "unknown audio format 'xyz'" in error_of(post(server, json=request), 400)


def test_audio_past_the_length_limit_is_413(server, songs):
    assert "--max-audio-seconds" in error_of(post(server, json=body(songs["too_long"])), 413)


@pytest.mark.parametrize("change,field", [
    ({"max_tokens": "ten"}, "max_tokens"), ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": 10**6}, "max_tokens"),
    ({"temperature": "hot"}, "temperature"), ({"temperature": 9}, "temperature"), ({"top_p": 0}, "top_p"),
    ({"seed": 1.5}, "seed"), ({"stream": "yes"}, "stream"), ({"stop": [1]}, "stop"), ({"stop": ["a"] * 5}, "stop"),
    ({"messages": "hi"}, "messages"), ({"messages": []}, "messages"), ({"messages": [{"role": "robot"}]}, "role"),
    ({"messages": [{"role": "user", "content": 5}]}, "content"), ({"messages": [{"role": "user", "content": "hi"}]},
                                                                 "one song"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "number"}}}}, "not supported"),
    ({"response_format": {"type": "xml"}}, "response_format"), ({"n": 3}, "n"), ({"model": 5}, "model"),
    ({"logprobs": "yes"}, "logprobs"), ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
])
def test_wrong_types_and_values_are_400_naming_the_field(server, songs, change, field):
    assert field in error_of(post(server, json={**body(songs["short"]), **change}), 400)


def test_missing_fields_are_400_and_an_unknown_model_404(server, songs):
    request = body(songs["short"])
    for name in ("model", "messages"):
        assert name in error_of(post(server, json={k: v for k, v in request.items() if k != name}), 400)
    assert "not served here" in error_of(post(server, json={**request, "model": "gpt-4o"}), 404)


def test_audio_url_outside_the_allowed_folder_or_not_a_file_url_is_400(server, songs, tmp_path):
    for url, words in [("file:///etc/passwd", "outside"), ("https://example.com/a.wav", "only file://"),
                       (songs["short"].parent.joinpath("missing.wav").as_uri(), "no such audio file")]:
        request = body(songs["short"])
        request["messages"][0]["content"][0] = {"type": "audio_url", "audio_url": {"url": url}}
        assert words in error_of(post(server, json=request), 400)


def test_unknown_paths_and_methods_answer_openai_errors(server):
    assert error_of(httpx.get(f"{server.url}/v2/nothing"), 404)
    assert error_of(httpx.get(f"{server.url}/v1/chat/completions"), 405)


def test_nothing_hostile_crashes_the_server(server, client, songs):
    good = body(songs["short"])
    hostile = [b"", b"null", b"{}", b'{"model": "tiny"}', b"1e999999", b"[" * 100000, b'"' + b"a" * 1000,
               json.dumps({**good, "messages": [{"role": "user", "content": [None, 5, "x", {}]}]}).encode(),
               json.dumps({**good, "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}).encode(),
               json.dumps({**good, "messages": [{"role": "user", "content": [
                   {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]}).encode(),
               json.dumps({**good, "messages": [{"role": "user", "content": [
                   {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"\0" * 5000).decode(),
                                                           "format": "mp3"}}]}]}).encode(),
               json.dumps({**good, "messages": good["messages"] * 2}).encode(),
               json.dumps({**good, "messages": [{"role": "assistant", "content": "hi"}]}).encode(),
               json.dumps({**good, "stream": True, "max_tokens": -1}).encode()]
    for content in hostile:
        r = post(server, content)
        assert 400 <= r.status_code < 500, (content[:80], r.status_code, r.text)
    assert ask(client, songs["other"], **SEEDED).choices[0].message.content
    assert in_flight(server) == 0
