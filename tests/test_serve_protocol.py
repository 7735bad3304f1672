"""runtime/serve/protocol.py without a server: what a request becomes, and the light install's imports."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest

from gamma_rt.runtime.serve.protocol import Limits, RequestError, parse_chat_request

AUDIO = {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"RIFF....").decode(), "format": "WAV"}}


def request(**kw) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": [AUDIO, {"type": "text", "text": "Genre?"}]}], **kw}


def test_a_request_becomes_turns_sampling_and_one_audio():
    chat = parse_chat_request(request(max_tokens=9, temperature=0.5, seed=3, stop="END", stream=True,
                                      stream_options={"include_usage": True}), "m", Limits(max_tokens=64))
    assert chat.turns == [("Genre?", None)] and chat.audio.data == b"RIFF...." and chat.audio.format == "wav"
    assert (chat.max_tokens, chat.sampling.temperature, chat.sampling.seed, chat.stop) == (9, 0.5, 3, ("END",))
    assert chat.stream and chat.include_usage and chat.schema is None
    # by default: greedy, as gamma-rt ask, and the server's --max-tokens
    default = parse_chat_request(request(), "m", Limits(max_tokens=64))
    assert (default.sampling.temperature, default.max_tokens) == (0.0, 64)


def test_turns_pair_questions_with_earlier_answers_and_system_text_is_kept():
    body = request()
    body["messages"] = [{"role": "system", "content": "Be brief."}, *body["messages"],
                        {"role": "assistant", "content": [{"type": "text", "text": "Jazz."}]},
                        {"role": "user", "content": "Tempo?"}, {"role": "user", "content": "In BPM."}]
    chat = parse_chat_request(body, "m", Limits())
    assert chat.system == "Be brief." and chat.turns == [("Genre?", "Jazz."), ("Tempo?\nIn BPM.", None)]


def test_audio_in_a_later_turn_is_refused():
    body = request()
    body["messages"] += [{"role": "assistant", "content": "Jazz."}, {"role": "user", "content": [AUDIO]}]
    with pytest.raises(RequestError, match="first user message") as e:
        parse_chat_request(body, "m", Limits())
    assert e.value.status == 400 and e.value.param == "messages[2]"


def test_json_schema_response_format_becomes_a_grammar():
    schema = {"type": "object", "properties": {"mood": {"enum": ["calm", "wild"]}}}
    chat = parse_chat_request(request(response_format={"type": "json_schema", "json_schema": {"schema": schema}}),
                              "m", Limits())
    assert chat.schema["required"] == ["mood"] and "root ::=" in chat.sampling.grammar


def test_local_files_are_refused_unless_allowed(tmp_path):
    body = request()
    body["messages"][0]["content"][0] = {"type": "audio_url", "audio_url": {"url": (tmp_path / "a.wav").as_uri()}}
    with pytest.raises(RequestError, match="--allow-local-files"):
        parse_chat_request(body, "m", Limits())
    assert parse_chat_request(body, "m", Limits(local_files=tmp_path)).audio.path == tmp_path / "a.wav"


def test_serve_modules_but_the_web_ones_import_without_the_serve_extra():
    """The runtime install stays light: the command registers, and the model side imports, with FastAPI,
    uvicorn and prometheus-client absent."""
    script = (
        "import sys\n"
        "for name in ('fastapi', 'starlette', 'uvicorn', 'prometheus_client', 'openai', 'httpx'): sys.modules[name] = None\n"
        "import gamma_rt.runtime.serve, gamma_rt.runtime.serve.commands, gamma_rt.runtime.serve.protocol\n"
        "import gamma_rt.runtime.serve.chat_job, gamma_rt.runtime.engine.scheduler\n"
        "from gamma_rt.cli import build_parser\n"
        "build_parser().parse_args(['serve', 'bundle'])\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_serve_without_the_extra_says_what_to_install(tmp_path):
    script = ("import sys\nsys.modules['uvicorn'] = None\nfrom gamma_rt.cli import main\n"
              f"sys.exit(main(['serve', {str(tmp_path)!r}]))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 2 and "pip install 'gamma-rt[serve]'" in out.stderr, out.stderr
