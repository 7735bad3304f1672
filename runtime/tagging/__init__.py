"""Batch tagging of a music library (``gamma-rt tag``): an application built on the runtime's Pipeline.

Data flows top to bottom; each module is one concern:

- ``library.py``: the audio files under a folder (``Track``, ``walk``);
- ``prompt_sets.py`` + ``default_prompts.toml``: the questions asked about every track;
- ``schema_grammar.py``: a prompt's JSON schema -> llama.cpp GBNF grammar, and checking the parsed answer;
- ``worker.py``: one track -> one record (decode, ask, parse), on one Pipeline;
- ``ray_actors.py``: the same on Ray actors;
- ``run.py``: the job loop (walk, skip what is done, hand tracks to workers, journal the records);
- ``journal.py``: the SQLite journal, the run's source of truth;
- ``records.py``: the result files (JSONL/CSV/SQLite) derived from the journal;
- ``file_tags.py``: writing genre/mood/caption into the audio files' own tags;
- ``progress.py``: the progress bar;
- ``commands.py``: the ``gamma-rt tag`` command (each stage registers its commands from a commands.py).

How the model runs (backend, precision, threads, GPU layers, cache) is one
:class:`gamma_rt.runtime.options.RuntimeOptions`, passed unchanged from the command to every Pipeline.
"""
