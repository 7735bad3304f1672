"""OpenAI's chat-completions request, read and checked, and the response objects; no model, no web framework.

:func:`parse_chat_request` takes the decoded JSON body and returns a :class:`ChatRequest`, or raises
:class:`RequestError` with the HTTP status and a message naming the field (``messages[0].content[1].
input_audio.data: not valid base64``). :func:`error_body` is OpenAI's error JSON around such a message.

A conversation is about one song: one audio part, in the first user message (the prompt puts the audio
before the question, so every turn after it reuses the audio prefix). Later user messages are text.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from gamma_rt.errors import PromptSetError

from ..sampling import Sampling

# Names a client may give in input_audio.format. Decoding sniffs the bytes (libsndfile, then FFmpeg), so the
# name only has to be a known one; raw PCM is not taken (it has no header to say its rate).
AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg", "oga", "opus", "m4a", "mp4", "aac", "webm", "aiff", "aif", "wma",
                 "wv", "caf", "mka")
MAX_STOP_STRINGS = 4  # as OpenAI's API
MAX_TOP_LOGPROBS = 20  # as OpenAI's API
ERROR_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 413: "invalid_request_error",
               429: "rate_limit_error", 499: "client_closed_request", 503: "server_error", 500: "server_error"}


class RequestError(Exception):
    """A request the server refuses: ``status`` is the HTTP code, the message one line naming the field."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error JSON: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (the server's command-line limits)."""

    max_tokens: int = 512  # ceiling of max_tokens, and its default
    max_audio_seconds: float = 300.0
    local_files: Path | None = None  # audio_url file:// paths are taken only under this folder (None: refused)


@dataclass(frozen=True)
class AudioInput:
    """The song of a request: base64-decoded bytes, or a local file. ``where`` names the part for messages."""

    where: str
    data: bytes | None = None
    path: Path | None = None
    format: str | None = None


@dataclass(frozen=True)
class ChatRequest:
    """A checked request. ``turns``: (question, answer) per user turn, the last one's answer None."""

    model: str
    audio: AudioInput
    turns: list[tuple[str, str | None]]
    system: str | None = None
    max_tokens: int = 512
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    schema: dict | None = None  # response_format's JSON schema, normalized; sampling.grammar holds its GBNF
    logprobs: bool = False  # each answer token's log-probability (and its bytes) in the response
    top_logprobs: int = 0  # and that many most likely tokens at each position


def parse_chat_request(body: object, model: str, limits: Limits) -> ChatRequest:
    """Check a decoded /v1/chat/completions body against what this server does; RequestError otherwise."""
    if not isinstance(body, dict):
        raise RequestError(400, f"request body must be a JSON object, got {_kind(body)}")
    asked = _get(body, "model", str, required=True)
    if asked != model:
        raise RequestError(404, f"model {asked!r} is not served here; this server serves {model!r}", "model",
                           "model_not_found")
    for name, ok in (("n", lambda v: v in (None, 1)), ("tools", lambda v: not v), ("audio", lambda v: v is None)):
        if not ok(body.get(name)):
            raise RequestError(400, f"{name}: not supported by gamma-rt serve", name)
    system, turns, audio = _read_messages(body.get("messages"), limits)
    max_tokens = _max_tokens(body, limits)
    stop = _get(body, "stop", (str, list)) or ()
    stop = (stop,) if isinstance(stop, str) else stop
    if len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(400, f"stop: up to {MAX_STOP_STRINGS} non-empty strings", "stop")
    schema, grammar = _response_format(body.get("response_format"))
    sampling = Sampling(temperature=_number(body, "temperature", 0.0, 0.0, 2.0),
                        top_p=_number(body, "top_p", 0.95, 0.0, 1.0, low_open=True),
                        top_k=_get(body, "top_k", int) or 40, seed=_get(body, "seed", int) or 0, grammar=grammar)
    options = _get(body, "stream_options", dict) or {}
    logprobs = bool(_get(body, "logprobs", bool))
    top = _get(body, "top_logprobs", int)
    if top is not None and not (logprobs and 0 <= top <= MAX_TOP_LOGPROBS):
        raise RequestError(400, f"top_logprobs: 0..{MAX_TOP_LOGPROBS}, with logprobs true", "top_logprobs")
    return ChatRequest(asked, audio, turns, system, max_tokens, sampling, tuple(stop),
                       stream=bool(_get(body, "stream", bool)), include_usage=bool(options.get("include_usage")),
                       schema=schema, logprobs=logprobs, top_logprobs=top or 0)


def _read_messages(messages: object, limits: Limits) -> tuple[str | None, list[tuple[str, str | None]], AudioInput]:
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages: a non-empty list of messages is required", "messages")
    system: list[str] = []
    turns: list[list] = []  # [role, [texts]], consecutive messages of one role merged
    audio: list[AudioInput] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError(400, f"{where}: a message must be an object, got {_kind(message)}", where)
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise RequestError(400, f"{where}.role: {role!r} is not one of system, developer, user, assistant",
                               f"{where}.role")
        texts, found = _read_content(message.get("content"), f"{where}.content", role == "user", limits)
        if role in ("system", "developer"):
            if turns:
                raise RequestError(400, f"{where}: a {role} message must come before the conversation", where)
            system += texts
            continue
        first_user_turn = not turns or (len(turns) == 1 and turns[0][0] == "user")
        if found and not first_user_turn:
            raise RequestError(400, f"{where}: the audio belongs in the first user message (later turns reuse "
                               "it)", where)
        audio += found
        if turns and turns[-1][0] == role:
            turns[-1][1] += texts
        else:
            turns.append([role, texts])
    if not turns or turns[0][0] != "user":
        raise RequestError(400, "messages: the conversation must start with a user message", "messages")
    if turns[-1][0] != "user":
        raise RequestError(400, "messages: the last message must be the user's", "messages")
    if len(audio) != 1:
        raise RequestError(400, f"messages: a conversation is about one song: {len(audio)} audio parts "
                           "(input_audio or audio_url) given, 1 needed", "messages")
    joined = ["\n".join(texts) for _, texts in turns]
    pairs = [(joined[k], joined[k + 1] if k + 1 < len(joined) else None) for k in range(0, len(joined), 2)]
    return ("\n".join(system) if system else None), pairs, audio[0]


def _read_content(content: object, where: str, audio_allowed: bool,
                  limits: Limits) -> tuple[list[str], list[AudioInput]]:
    """(text pieces, audio inputs) of one message's content: a string or a list of parts."""
    if isinstance(content, str):
        return [content], []
    if not isinstance(content, list):
        raise RequestError(400, f"{where}: must be a string or a list of parts, got {_kind(content)}", where)
    texts, audio = [], []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise RequestError(400, f"{at}.text: must be a string, got {_kind(text)}", f"{at}.text")
            texts.append(text)
        elif kind in ("input_audio", "audio_url") and audio_allowed:
            audio.append(_input_audio(part, at) if kind == "input_audio" else _audio_url(part, at, limits))
        elif kind in ("input_audio", "audio_url"):
            raise RequestError(400, f"{at}: audio goes in a user message", at)
        else:
            raise RequestError(400, f"{at}.type: {kind!r} is not a supported part (text, input_audio, audio_url)",
                               f"{at}.type")
    return texts, audio


def _input_audio(part: dict, at: str) -> AudioInput:
    spec = part.get("input_audio")
    if not isinstance(spec, dict):
        raise RequestError(400, f"{at}.input_audio: must be an object with data and format", f"{at}.input_audio")
    data, fmt = spec.get("data"), spec.get("format")
    if not isinstance(data, str) or not data:
        raise RequestError(400, f"{at}.input_audio.data: base64 audio is required", f"{at}.input_audio.data")
    if not isinstance(fmt, str) or fmt.lower() not in AUDIO_FORMATS:
        raise RequestError(400, f"{at}.input_audio.format: unknown audio format {fmt!r}; one of "
                           f"{', '.join(AUDIO_FORMATS)}", f"{at}.input_audio.format")
    if data.startswith("data:") and "," in data:  # a data URL: data:audio/wav;base64,....
        data = data.split(",", 1)[1]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{at}.input_audio.data: not valid base64", f"{at}.input_audio.data") from None
    if not raw:
        raise RequestError(400, f"{at}.input_audio.data: empty audio", f"{at}.input_audio.data")
    return AudioInput(f"{at}.input_audio", data=raw, format=fmt.lower())


def _audio_url(part: dict, at: str, limits: Limits) -> AudioInput:
    spec = part.get("audio_url")
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str):
        raise RequestError(400, f"{at}.audio_url.url: must be a string", f"{at}.audio_url.url")
    parsed = urlparse(url)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise RequestError(400, f"{at}.audio_url.url: only file:// URLs are taken (send other audio as "
                           "input_audio)", f"{at}.audio_url.url")
    if limits.local_files is None:
        raise RequestError(400, f"{at}.audio_url: local files are off; start the server with "
                           "--allow-local-files DIR", f"{at}.audio_url")
    path = Path(unquote(parsed.path)).resolve()
    root = limits.local_files.resolve()
    if not path.is_relative_to(root):
        raise RequestError(400, f"{at}.audio_url.url: {path} is outside {root} (--allow-local-files)",
                           f"{at}.audio_url.url")
    return AudioInput(f"{at}.audio_url", path=path)


def _max_tokens(body: dict, limits: Limits) -> int:
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = _get(body, name, int)
    if value is None:
        return limits.max_tokens
    if not 1 <= value <= limits.max_tokens:
        raise RequestError(400, f"{name}: {value} is outside 1..{limits.max_tokens} (the server's --max-tokens)",
                           name)
    return value


def _response_format(spec: object) -> tuple[dict | None, str | None]:
    """(normalized JSON schema, its GBNF grammar), or (None, None) for plain text."""
    if spec is None:
        return None, None
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "text":
        return None, None
    if kind != "json_schema":
        raise RequestError(400, f"response_format.type: {kind!r} is not supported (text or json_schema)",
                           "response_format.type")
    inner = spec.get("json_schema")
    schema = inner.get("schema") if isinstance(inner, dict) else None
    from ..tagging.schema_grammar import normalize_schema, to_gbnf

    where = "response_format.json_schema.schema"
    try:
        schema = normalize_schema(schema, where)
        return schema, to_gbnf(schema, where)
    except PromptSetError as e:
        raise RequestError(400, str(e), where) from None


def _get(body: dict, name: str, kind, required: bool = False):
    """``body[name]`` if present and of ``kind`` (bool is not an int here); None when absent or null."""
    value = body.get(name)
    if value is None:
        if required:
            raise RequestError(400, f"{name}: required", name)
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(_TYPE_NAMES[k] for k in kinds)
        raise RequestError(400, f"{name}: must be {names}, got {_kind(value)}", name)
    return value


def _number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = _get(body, name, (int, float))
    if value is None:
        return default
    if not (low < value if low_open else low <= value) or value > high:
        raise RequestError(400, f"{name}: {value} is outside {'(' if low_open else '['}{low:g}, {high:g}]", name)
    return float(value)


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list",
               dict: "an object"}


def _kind(value: object) -> str:
    return {type(None): "null", bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


# --- responses ----------------------------------------------------------------------------------------


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def token_logprob(token: bytes, logprob: float, top: list[tuple[bytes, float]] = ()) -> dict:
    """One entry of ``logprobs.content``: the token (its text, and its bytes, which may be part of a UTF-8
    character), its log-probability, and the most likely tokens at its position."""
    def entry(b: bytes, lp: float) -> dict:
        return {"token": b.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(b)}

    return {**entry(token, logprob), "top_logprobs": [entry(b, lp) for b, lp in top]}


def completion(cid: str, model: str, text: str, finish_reason: str, prompt_tokens: int,
               completion_tokens: int, logprobs: list[dict] | None = None) -> dict:
    """A ``chat.completion`` object with one choice; ``logprobs``: its token_logprob entries, if asked."""
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None if logprobs is None else {"content": logprobs},
                         "finish_reason": finish_reason}],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk(cid: str, model: str, delta: dict, finish_reason: str | None = None, usage_: dict | None = None,
          logprobs: list[dict] | None = None) -> dict:
    """A ``chat.completion.chunk`` (one SSE event of a streamed answer); the usage chunk has no choices."""
    choices = [] if usage_ is not None else [{"index": 0, "delta": delta,
                                              "logprobs": None if logprobs is None else {"content": logprobs},
                                              "finish_reason": finish_reason}]
    out = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
           "choices": choices}
    if usage_ is not None:
        out["usage"] = usage_
    return out
