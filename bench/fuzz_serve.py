"""The fuzz run's server and library areas: hostile requests to a real ``gamma-rt serve``, hostile files and
prompt sets through a real ``gamma-rt tag``.

A server case passes when the answer is not a 5xx, the server neither died nor printed a traceback, and a
normal request sent right after it is still answered: a hostile request that leaks its sequence shows up
as the next normal request hanging.
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
import math
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

from .fuzz import last_line, FAILING, TAIL_CHARS, TRACEBACK, CaseResult, FuzzContext, gamma_rt_command, run_command
from .fuzz_bundle import json_paths

SERVER_START_S = 120.0  # the bundle loads and warms up before the first case
# JSON text, not objects: the deepest is past what Python's own json module can write.
HOSTILE_SCHEMAS = [json.dumps(s) for s in (
    {"type": "string", "maxLength": 20000}, {"type": "string", "maxLength": 5000},
    {"type": "string", "enum": [f"s{i}" for i in range(100_000)]},
    {"type": "array", "maxItems": 10**9, "items": {"type": "string", "maxLength": 8}},
    {"type": "string"}, {"$ref": "#"}, {"type": "object", "properties": {"a": {"$ref": "#"}}},
    {"type": "string", "pattern": "(a+)+$", "maxLength": 8}, {"type": ["string", "null"], "maxLength": -1},
    {"anyOf": [{"type": "string", "maxLength": 4}] * 2000},
)] + ['{"type": "object", "properties": {"a": ' * depth + '{"type": "string", "maxLength": 4}' + "}}" * depth
      for depth in (100, 2000)]
REQUEST_VALUES = [math.nan, math.inf, 1e308, -1, 0, 2**70, "x", "", [], {}, None, True, "\x00\x1b[2J", "a" * 200_000]


class Server:
    """One ``gamma-rt serve`` process on a free port; its output is collected on a thread."""

    def __init__(self, ctx: FuzzContext):
        self.ctx = ctx
        cmd = gamma_rt_command("serve", ctx.bundle, "--port", 0, "--parallel", 2, "--max-tokens", 16,
                               "--max-audio-seconds", 30, "--max-queue", 4, "--threads", ctx.threads)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ctx.env(),
                                     start_new_session=True)
        self.lines: list[str] = []
        self.port: int | None = None
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + SERVER_START_S
        while self.port is None and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.port is None:
            self.stop()
            raise RuntimeError("gamma-rt serve did not start:\n" + "".join(self.lines)[-TAIL_CHARS:])

    def _read(self) -> None:
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            found = re.search(r"listening on http://[^:]+:(\d+)", line)
            if found:
                self.port = int(found.group(1))

    def output_since(self, n: int) -> str:
        return "".join(self.lines[n:])

    def send(self, method: str, path: str, headers: dict, body: bytes, timeout: float) -> int:
        """The response's status (the body is read whole); raises socket.timeout or OSError."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.endheaders()
            if body:
                conn.send(body)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def probe(self, good: bytes, timeout: float, note: str = "") -> tuple[str, str]:
        """Send the normal request; ("ok", note) when it is answered 200, else what went wrong."""
        headers = {"Content-Type": "application/json", "Content-Length": str(len(good))}
        try:
            status = self.send("POST", "/v1/chat/completions", headers, good, timeout)
        except (socket.timeout, TimeoutError):
            return "hang", f"{note}; then a normal request got no answer"
        except OSError as e:
            return "crash", f"{note}; then a normal request: {e}"
        if status != 200:
            return ("5xx" if status >= 500 else "hang"), f"{note}; then a normal request got {status}"
        return "ok", note

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
        self.proc.wait()


def good_request(ctx: FuzzContext) -> dict:
    song = base64.b64encode(ctx.song.read_bytes()).decode()
    return {"model": ctx.bundle.name, "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": song, "format": ctx.song.suffix[1:]}},
        {"type": "text", "text": "What genre is this?"}]}]}


def hostile_request(good: dict, rng) -> tuple[str, str, str, dict, bytes]:
    """(what, method, path, headers, body) of one hostile request."""
    kind = rng.choice(["value", "value", "value", "schema", "params", "raw", "headers", "audio", "messages"])
    body = copy.deepcopy(good)
    headers = {"Content-Type": "application/json"}
    path = "/v1/chat/completions"
    if kind == "value":
        where = rng.choice([p for p in json_paths(body) if p and p[-1] != "data"])
        parent = body
        for k in where[:-1]:
            parent = parent[k]
        value = rng.choice(REQUEST_VALUES)
        parent[where[-1]] = value
        what = f"{'.'.join(map(str, where))} = {value!r}"[:100]
    elif kind == "schema":
        schema = rng.choice(HOSTILE_SCHEMAS)
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "x", "schema": "SCHEMA"}}
        text = json.dumps(body).replace('"SCHEMA"', schema)
        return f"response_format schema {schema[:80]}", "POST", path, headers, text.encode()
    elif kind == "params":
        field, value = rng.choice([("max_tokens", 10**12), ("max_tokens", "8"), ("temperature", 1e308),
                                   ("temperature", -1), ("top_p", 2.0), ("top_k", -5), ("seed", 2**70),
                                   ("stop", ["x"] * 5), ("stop", [1]), ("n", 2), ("logprobs", True),
                                   ("top_logprobs", 10**6), ("stream", "yes"), ("stream_options", [1]),
                                   ("max_completion_tokens", -(2**63)), ("tools", [{"type": "function"}])])
        body[field] = value
        if field == "top_logprobs":
            body["logprobs"] = True
        what = f"{field} = {value!r}"
    elif kind == "audio":
        part = body["messages"][0]["content"][0]["input_audio"]
        choice = rng.choice(["random", "truncated", "empty", "format", "badb64", "dataurl", "wavhead"])
        raw = base64.b64decode(part["data"])
        part["data"] = {
            "random": base64.b64encode(os.urandom(4000)).decode(), "empty": "",
            "truncated": base64.b64encode(raw[:rng.randrange(len(raw))]).decode(), "format": part["data"],
            "badb64": "!!!not base64@@@", "dataurl": "data:audio/flac;base64,", "wavhead": base64.b64encode(
                b"RIFF\xff\xff\xff\xffWAVEfmt \x10\0\0\0\x01\0\xff\xff\xff\xff\xff\xff\0\0\0\0\0\0\x10\0data\xff\xff\xff\x7f"
                + os.urandom(64)).decode()}[choice]
        if choice == "format":
            part["format"] = rng.choice(["exe", "", "../../wav", "wav\x00"])
        what = f"audio: {choice}"
    elif kind == "messages":
        choice = rng.choice(["two_audio", "system_audio", "many", "long_text", "tool_role", "empty"])
        msgs = body["messages"]
        if choice == "two_audio":
            msgs[0]["content"].append(copy.deepcopy(msgs[0]["content"][0]))
        elif choice == "system_audio":
            msgs.insert(0, {"role": "system", "content": copy.deepcopy(msgs[0]["content"])})
        elif choice == "many":
            msgs += [{"role": "user", "content": "again?"}, {"role": "assistant", "content": "rock"}] * 5000
        elif choice == "long_text":
            msgs[0]["content"][1]["text"] = "genre? " * 100_000
        elif choice == "tool_role":
            msgs.append({"role": "tool", "content": "x", "tool_call_id": "1"})
        else:
            body["messages"] = []
        what = f"messages: {choice}"
    else:
        return raw_request(kind, body, headers, path, rng)
    return what, "POST", path, headers, json.dumps(body).encode()


def raw_request(kind: str, body: dict, headers: dict, path: str, rng) -> tuple[str, str, str, dict, bytes]:
    data = json.dumps(body).encode()
    if kind == "raw":
        choice = rng.choice(["not_json", "empty", "array", "null", "utf8", "nested", "truncated"])
        data = {"not_json": b"hello", "empty": b"", "array": b"[]", "null": b"null", "utf8": b'{"model": "\xff\xfe"}',
                "nested": b"[" * 100_000 + b"]" * 100_000, "truncated": data[:len(data) // 2]}[choice]
        headers["Content-Length"] = str(len(data))
        return f"body: {choice}", "POST", path, headers, data
    choice = rng.choice(["text_plain", "short_length", "huge_header", "control_header", "many_headers", "get",
                         "odd_path", "chunked_garbage"])
    method = "POST"
    if choice == "text_plain":
        headers["Content-Type"] = "text/plain"
    elif choice == "short_length":
        headers["Content-Length"] = str(len(data) // 3)
    elif choice == "huge_header":
        headers["X-Fuzz"] = "a" * 200_000
    elif choice == "control_header":
        headers["X-Fuzz"] = "\x01\x7f\x1b[2J"
    elif choice == "many_headers":
        headers.update({f"X-Fuzz-{i}": "1" for i in range(2000)})
    elif choice == "get":
        method, data = "GET", b""
    elif choice == "odd_path":
        path = rng.choice(["/v1/chat/completions/../../../etc/passwd", "/%00", "/v1/models?x=%ff%fe", "/" + "a" * 100_000])
    else:
        headers["Transfer-Encoding"] = "chunked"
        data = b"zz\r\nnot a chunk\r\n"
    if "Content-Length" not in headers and choice != "chunked_garbage":
        headers["Content-Length"] = str(len(data))
    return f"request: {choice}", method, path, headers, data


# Connections a client opens and never finishes: the server must go on answering the others meanwhile.
HELD = {
    "partial_headers": b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty",
    "short_body": b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100000\r\n\r\n{\"model\": ",
    "silent": b"",
}


def server_cases(ctx: FuzzContext, n: int) -> Iterator[CaseResult]:
    good = json.dumps(good_request(ctx)).encode()
    server = None
    try:
        for _ in range(n):
            if server is None:
                server = Server(ctx)
                server.probe(good, ctx.timeout)  # warms the embedding cache
            result = server_case(server, ctx, good)
            yield result
            if result.outcome in ("crash", "hang"):
                server.stop()
                server = None  # a fresh server for the next case
    finally:
        if server is not None:
            server.stop()


def server_case(server: Server, ctx: FuzzContext, good: bytes) -> CaseResult:
    """One hostile request (or a held-open connection), then a normal request that must be answered."""
    mark, t0 = len(server.lines), time.monotonic()
    outcome, rc, note, held = "ok", None, "", None
    if ctx.rng.random() < 0.1:
        what = f"held connection: {ctx.rng.choice(sorted(HELD))}"
        held = socket.create_connection(("127.0.0.1", server.port), timeout=ctx.timeout)
        held.sendall(HELD[what.split(": ")[1]])
    else:
        what, method, path, headers, body = hostile_request(json.loads(good), ctx.rng)
        try:
            status = server.send(method, path, headers, body, ctx.timeout)
            note = f"status {status}"
            outcome = "5xx" if status >= 500 else "ok"
        except (socket.timeout, TimeoutError):
            outcome, note = "hang", "no answer within the timeout"
        except OSError as e:
            note = f"connection: {e}"  # refused input may close the connection; the probe says if it lived
    if outcome == "ok":
        outcome, note = server.probe(good, ctx.timeout, note)
    if held is not None:
        held.close()
    time.sleep(0.05)
    if server.proc.poll() is not None:
        outcome, rc = "crash", server.proc.returncode
    output = server.output_since(mark)
    if outcome == "ok" and TRACEBACK in output:
        outcome = "traceback"
    tail = (note + "\n" + output)[-TAIL_CHARS:] if outcome in FAILING else note
    return CaseResult("server", what, outcome, round(time.monotonic() - t0, 2), rc, tail)


# --- library --------------------------------------------------------------------------------------

ONE_PROMPT = """name = "fuzz"
[[prompt]]
name = "genre"
question = "What is the genre of this track?"
schema = { type = "object", properties = { genre = { type = "string", maxLength = 8 } } }
"""
HOSTILE_PROMPTS = {
    "schema maxLength 20000": ONE_PROMPT.replace("maxLength = 8", "maxLength = 20000"),
    "schema of 100000 enum strings": ONE_PROMPT.replace(
        'type = "string", maxLength = 8', "enum = [" + ", ".join(f'"e{i}"' for i in range(100_000)) + "]"),
    "schema without maxLength": ONE_PROMPT.replace(", maxLength = 8", ""),
    "not TOML": "[[prompt\nname = ",
    "no prompts": 'name = "x"\n',
    "a 1 MB question": ONE_PROMPT.replace("What is the genre of this track?", "genre? " * 150_000),
    "max_tokens -1": ONE_PROMPT + "max_tokens = -1\n",
    "a schema 1000 objects deep": ONE_PROMPT.replace(
        'genre = { type = "string", maxLength = 8 }', "a = { type = \"object\", properties = { " * 1000
        + 'b = { type = "string", maxLength = 4 }' + " } }" * 1000),
}


def hostile_file(lib: Path, good: Path, rng) -> str:
    """Put one hostile entry into ``lib``; returns what it is."""
    raw = good.read_bytes()
    kind = rng.choice(["random", "empty", "truncated", "lying_wav", "m4a_random", "non_utf8", "control_name",
                       "long_name", "fifo", "directory", "dangling_link", "link_loop", "unreadable"])
    if kind == "random":
        (lib / "noise.flac").write_bytes(os.urandom(rng.randrange(1, 100_000)))
    elif kind == "empty":
        (lib / "empty.mp3").write_bytes(b"")
    elif kind == "truncated":
        (lib / "cut.flac").write_bytes(raw[:rng.randrange(1, len(raw))])
    elif kind == "lying_wav":
        (lib / "lying.wav").write_bytes(b"RIFF\xff\xff\xff\xffWAVEfmt \x10\0\0\0\x01\0\x02\0\x80\xbb\0\0\0\xee\x02\0"
                                        b"\x04\0\x10\0data\xff\xff\xff\x7f" + os.urandom(1000))
    elif kind == "m4a_random":
        (lib / "x.m4a").write_bytes(b"\0\0\0\x20ftypM4A " + os.urandom(5000))
    elif kind == "non_utf8":
        os.link(good, os.path.join(os.fsencode(lib), b"caf\xe9-\xff.flac"))
    elif kind == "control_name":
        os.link(good, lib / "bad\n\x1b[2Jname\r.flac")
    elif kind == "long_name":
        os.link(good, lib / ("x" * 240 + ".flac"))
    elif kind == "fifo":
        os.mkfifo(lib / "pipe.wav")
    elif kind == "directory":
        (lib / "folder.flac").mkdir()
    elif kind == "dangling_link":
        (lib / "gone.flac").symlink_to(lib / "nowhere.flac")
    elif kind == "link_loop":
        (lib / "loop.flac").symlink_to(lib / "loop.flac")
    else:
        target = lib / "locked.flac"
        target.write_bytes(raw)
        target.chmod(0)
    return f"file: {kind}"


def library_cases(ctx: FuzzContext, n: int) -> Iterator[CaseResult]:
    for _ in range(n):
        case = ctx.scratch("library")
        lib, out = case / "lib", case / "out"
        lib.mkdir()
        good = lib / "good.flac"
        good.write_bytes(ctx.song.read_bytes())
        prompts = case / "prompts.toml"
        if ctx.rng.random() < 0.3:
            what, text = ctx.rng.choice(sorted(HOSTILE_PROMPTS.items()))
            what = f"prompts: {what}"
        else:
            what, text = hostile_file(lib, good, ctx.rng), ONE_PROMPT
        prompts.write_text(text)
        cmd = gamma_rt_command("tag", lib, "--bundle", ctx.bundle, "--out", out, "--prompts", prompts, "--quiet",
                               "--threads", ctx.threads)
        t0 = time.monotonic()
        outcome, rc, text = run_command(cmd, ctx.timeout, env=ctx.env())
        if outcome in ("ok", "clean-error") and what.startswith("file:") and not has_record(out, "good.flac"):
            outcome = "lost"
        yield CaseResult("library", what, outcome, round(time.monotonic() - t0, 2), rc,
                         text[-TAIL_CHARS:] if outcome in FAILING else last_line(text))
        for f in lib.iterdir():
            if f.name == "locked.flac":
                f.chmod(0o600)


def has_record(out: Path, name: str) -> bool:
    """Whether RESULTS/records.jsonl holds an ok record of the file called ``name``."""
    try:
        lines = (out / "records.jsonl").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if Path(str(record.get("path", ""))).name == name and record.get("status", "ok") == "ok":
            return True
    return False
