"""runtime/serve/: ``gamma-rt serve``, an OpenAI-compatible HTTP server, a front end of the runtime's batching
engine (runtime/engine/).

- ``protocol.py``: the chat-completions request read and checked, the response objects (no model, no web);
- ``request_audio.py``: a request's song opened and checked before it is queued;
- ``chat_job.py``: a request as a job of the engine (its prompt in tokens, its sampling, its logprobs);
- ``metrics.py``: the Prometheus counters and histograms;
- ``app.py``: the ASGI app (FastAPI on uvicorn) and its endpoints;
- ``commands.py``: the ``gamma-rt serve`` command.

Only ``app.py`` and ``metrics.py`` need the ``serve`` extra (FastAPI, uvicorn, prometheus-client), and they
are imported when the server starts, so ``import gamma_rt.runtime.serve`` works on a light install.
"""
