"""runtime/engine/: the runtime's batching engine, one thread that owns the decoder and steps every running
answer together in one llama.cpp batch (continuous batching).

- ``scheduler.py``: admissions, prefill pieces and decode steps, turn by turn.

``gamma-rt serve`` (runtime/serve/) is a front end of it: it turns HTTP requests into the engine's jobs and
their events into responses.
"""
