"""``gamma-rt serve``: the bundle behind an OpenAI-compatible HTTP server (needs the ``serve`` extra)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..options import RuntimeOptions, add_runtime_options

DESCRIPTION = """\
Serve a bundle over HTTP with OpenAI's chat-completions API: a music app, a notebook or a load generator
sends a song (base64 input_audio, or a file:// audio_url with --allow-local-files) and questions, and gets
the answer whole or streamed (SSE). Requests share one loaded model: their answers decode together as
parallel sequences of one llama.cpp context (a new request joins between decode steps), and one request's
audio is encoded while the others decode.

  POST /v1/chat/completions   GET /v1/models   GET /health   GET /metrics (Prometheus)

Example:
  gamma-rt serve bundle --port 8080 --parallel 8 --cache-dir ~/.cache/gamma-rt
  python - <<'EOF'
  import base64, openai
  client = openai.OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="none")
  song = base64.b64encode(open("song.wav", "rb").read()).decode()
  reply = client.chat.completions.create(model="bundle", max_tokens=64, messages=[{"role": "user", "content": [
      {"type": "input_audio", "input_audio": {"data": song, "format": "wav"}},
      {"type": "text", "text": "What genre is this?"}]}])
  print(reply.choices[0].message.content)
  EOF

Needs the serve extra: pip install 'gamma-rt[serve]'. API and limits: docs/serve.md.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a bundle over HTTP (OpenAI chat-completions API)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path, help="bundle folder holding manifest.json, the ONNX graphs and a GGUF")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one and prints it)")
    p.add_argument("--parallel", type=int, default=4, metavar="N",
                   help="requests decoded together, as sequences of one decoder context (default 4)")
    p.add_argument("--ctx-size", type=int, default=None, metavar="TOKENS",
                   help="decoder KV cache, shared by all sequences (default: room for --parallel requests of "
                   "--max-audio-seconds audio and --max-tokens answers)")
    p.add_argument("--max-queue", type=int, default=16, metavar="N",
                   help="requests that may wait for a sequence; past that the server answers 429 (default 16)")
    p.add_argument("--max-tokens", type=int, default=512, metavar="N",
                   help="longest answer a request may ask for, and the default max_tokens (default 512)")
    p.add_argument("--max-audio-seconds", type=float, default=300.0, metavar="S",
                   help="longest audio a request may send; past it, 413 (default 300)")
    p.add_argument("--max-body-mb", type=float, default=100.0, metavar="MB",
                   help="largest request body; past it, 413 (default 100)")
    p.add_argument("--allow-local-files", type=Path, default=None, metavar="DIR",
                   help="take audio_url file:// paths under DIR (off by default: only input_audio)")
    p.add_argument("--model-name", default=None, metavar="NAME",
                   help="the model id clients ask for (default: the bundle folder's name)")
    p.add_argument("--header-timeout", type=float, default=10.0, metavar="S",
                   help="seconds a client has to send a request's head (request line and headers), from connecting "
                   "or from its previous answer; past it, 408 and the connection is closed (default 10)")
    p.add_argument("--body-timeout", type=float, default=60.0, metavar="S",
                   help="seconds a client has to send a request's body after its head; past it, 408 and the "
                   "connection is closed (default 60)")
    p.add_argument("--keep-alive", type=float, default=5.0, metavar="S",
                   help="seconds an idle connection stays open after an answer (default 5)")
    p.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")
    add_runtime_options(p, cache_help="keep audio embeddings here, so a song sent again skips the encoders "
                        "(shared with gamma-rt ask)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    import socket

    import uvicorn

    from ..pipeline import decoder_files
    from .app import create_app
    from .connections import server_config
    from .service import ServeOptions, Service
    from .warmup import warm_up

    options = ServeOptions(parallel=args.parallel, ctx_size=args.ctx_size, max_queue=args.max_queue,
                           max_tokens=args.max_tokens, max_audio_seconds=args.max_audio_seconds,
                           max_body_bytes=int(args.max_body_mb * 2**20), local_files=args.allow_local_files,
                           model_name=args.model_name, header_timeout_s=args.header_timeout,
                           body_timeout_s=args.body_timeout, keep_alive_s=args.keep_alive)
    runtime = RuntimeOptions.from_args(args)
    listener = socket.create_server((args.host, args.port), reuse_port=False)
    host, port = listener.getsockname()[:2]
    # a decoder llama.cpp loads but aborts on (the whole process) fails here, not on a client's request
    warm_up(*decoder_files(args.bundle, runtime), runtime.gpu_layers)
    with Service.open(args.bundle, runtime, options) as service:
        print(f"gamma-rt serve: {service.describe()}", file=sys.stderr)
        print(f"gamma-rt serve: listening on http://{host}:{port}", file=sys.stderr, flush=True)
        config = server_config(create_app(service), options.header_timeout_s, options.body_timeout_s,
                               options.keep_alive_s, access_log=args.access_log)
        uvicorn.Server(config).run(sockets=[listener])
    return 0
