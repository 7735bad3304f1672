"""runtime/engine/: the runtime's batching engine, one thread that owns the decoder and steps every running
answer together in one llama.cpp batch (continuous batching).

- ``job.py``: what the engine runs, a job: one audio prefix and one or more branches (questions) after it;
- ``events.py``: what it tells a job's front end (Piece, Done, Failed);
- ``listen.py``: the audio side of a job (decode, encode, cache) on its own thread;
- ``scheduler.py``: admissions, prefill pieces and decode steps, turn by turn.

``gamma-rt serve`` (runtime/serve/) and ``gamma-rt tag --in-flight`` (runtime/tagging/in_flight.py) are its
front ends: serve turns HTTP requests into jobs of one branch, tag turns tracks into jobs of one branch per
prompt.
"""
