"""The beets plugin ``gamma``: ask gamma-rt's prompt set about library items (``pip install 'gamma-rt[beets]'``).

In beets' config::

    plugins: gamma
    gamma:
        bundle: ~/models/gamma-bundle        # required: a folder made by `gamma-rt export`
        prompts: null                        # a prompt-set TOML/YAML; null: the built-in set
        out: null                            # journal + embedding cache; null: BEETSDIR/gamma
        backend: auto                        # the runtime options of `gamma-rt ask`
        threads: null
        gpu_layers: null
        apply: no                            # yes: the answers fill beets' own fields (below)
        auto: no                             # yes: ask about every item on import
        fields:                              # beets field: prompt name[.answer key]
            genre: genre.genre
            mood: mood.moods
            bpm: tempo.bpm
            initial_key: key
            comments: caption.caption

``beet gamma [QUERY]`` asks about the matching items and stores each answer as a flexible attribute
``gamma_<prompt name>`` (``beet ls -f '$title $gamma_genre'``). ``-a``/``--apply`` (or ``apply: yes``)
also fills the fields above (``genre`` goes to ``genres`` where beets has that list field; a name that is
no beets field, like ``mood``, becomes a flexible attribute); beets writes them into the files only where
its config says ``import: write: yes``. The answers live in gamma-rt's journal (the same one as ``gamma-rt tag``), so an
item already asked by this bundle and prompt set is not asked again (``-f`` forces it), and a killed run
loses nothing: run it again and it does the rest. An item whose file cannot be read fails alone, with one
line; file names that are not UTF-8 are asked about and journaled like any other (printed escaped).
"""

from __future__ import annotations

import json
from pathlib import Path

from beets import config as beets_config
from beets import ui, util
from beets.plugins import BeetsPlugin

from gamma_rt.terminal import printable

DEFAULT_FIELDS = {"genre": "genre.genre", "mood": "mood.moods", "bpm": "tempo.bpm", "initial_key": "key",
                  "comments": "caption.caption"}
ATTRIBUTE_PREFIX = "gamma_"


def _key_name(answer) -> str | None:
    """{tonic: "A", mode: "minor"} -> "Am", the way beets writes initial_key."""
    if not isinstance(answer, dict) or answer.get("tonic") in (None, "unknown"):
        return None
    return answer["tonic"] + ("m" if answer.get("mode") == "minor" else "")


def _bpm(value) -> int | None:
    return int(value) if isinstance(value, (int, float)) and value > 0 else None


# beets fields whose value is not the answer's text
_CONVERTERS = {"initial_key": _key_name, "bpm": _bpm}


def _text(value) -> str | None:
    if isinstance(value, list):
        value = "; ".join(str(v) for v in value)
    if isinstance(value, dict):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return None if value in (None, "") else str(value)


def attribute_value(prompt, answer) -> str | None:
    """The flexible attribute text of one answer: the prompt's tag_key field, the only field, or JSON."""
    if prompt.tag_key:
        return prompt.tag_value(answer)
    if isinstance(answer, dict) and len(answer) == 1:
        return _text(next(iter(answer.values())))
    return _text(answer)


def field_value(field: str, spec: str, answers: dict):
    """The value of beets field ``field`` from ``answers`` by ``spec`` ("prompt" or "prompt.key")."""
    prompt, _, key = spec.partition(".")
    answer = answers.get(prompt)
    value = answer.get(key) if key and isinstance(answer, dict) else answer
    convert = _CONVERTERS.get(field)
    return convert(value) if convert else _text(value)


class GammaPlugin(BeetsPlugin):
    def __init__(self):
        super().__init__()
        self.config.add({"bundle": None, "prompts": None, "out": None, "backend": "auto", "threads": None,
                         "gpu_layers": None, "apply": False, "auto": False, "fields": DEFAULT_FIELDS})
        self._tagger = None
        if self.config["auto"].get(bool):
            self.import_stages = [self.imported]

    def commands(self):
        cmd = ui.Subcommand("gamma", help="ask gamma-rt's prompt set about items (genre, mood, key, tempo...)")
        cmd.parser.add_option("-f", "--force", action="store_true", help="ask again about items already asked")
        cmd.parser.add_option("-a", "--apply", action="store_true",
                              help="fill beets' fields (genre, bpm, initial_key, mood, comments) from the answers")
        cmd.func = lambda lib, opts, args: self.ask(lib.items(args), opts.force,
                                                    opts.apply or self.config["apply"].get(bool))
        return [cmd]

    def imported(self, session, task):
        self.ask(task.imported_items(), False, self.config["apply"].get(bool))

    # --- the job ----------------------------------------------------------------------------------

    def _job(self):
        """(bundle, prompt set, journal key, results folder, runtime options) from the config."""
        from gamma_rt.errors import GammaError
        from gamma_rt.runtime.embed_cache import bundle_identity
        from gamma_rt.runtime.options import RuntimeOptions
        from gamma_rt.runtime.tagging.prompt_sets import PromptSet

        if not self.config["bundle"].get():
            raise ui.UserError("gamma: set gamma.bundle in beets' config to a gamma-rt bundle folder")
        bundle = Path(self.config["bundle"].as_filename())
        prompts = self.config["prompts"].get()
        out = Path(self.config["out"].as_filename()) if self.config["out"].get() else \
            Path(beets_config.config_dir()) / "gamma"
        try:
            prompt_set = PromptSet.load(Path(prompts).expanduser()) if prompts else PromptSet.default()
            options = RuntimeOptions(backend=self.config["backend"].get(str), threads=self.config["threads"].get(),
                                     gpu_layers=self.config["gpu_layers"].get(), cache_dir=out / "embedding-cache")
            return bundle, prompt_set, bundle_identity(bundle), out, options
        except GammaError as e:
            raise ui.UserError(f"gamma: {e}") from None

    def ask(self, items, force: bool, apply: bool) -> None:
        from gamma_rt.errors import GammaError
        from gamma_rt.runtime.tagging.journal import Journal
        from gamma_rt.runtime.tagging.run import JOURNAL_NAME
        from gamma_rt.runtime.tagging.run_lock import RunLock

        bundle, prompt_set, b_hash, out, options = self._job()
        key = prompt_set.hash
        try:
            with RunLock(out), Journal(out / JOURNAL_NAME) as journal:
                for item in items:
                    record = self._record(item, journal, bundle, prompt_set, b_hash, key, options, force)
                    if record is not None and record["status"] == "ok":
                        self._store(item, prompt_set, record["answers"], apply)
        except GammaError as e:
            raise ui.UserError(f"gamma: {e}") from None

    def _record(self, item, journal, bundle, prompt_set, b_hash, key, options, force) -> dict | None:
        """The item's record: from the journal when already asked, else asked now and journaled."""
        from gamma_rt.runtime.tagging.library import Track
        from gamma_rt.runtime.tagging.worker import TrackTagger, decode

        path = printable(util.displayable_path(item.path))  # a name's bytes that are not UTF-8 show as \xe9
        try:
            track = Track.stat(util.syspath(item.path))
        except OSError as e:  # moved or deleted behind beets' back: this item fails, the others go on
            ui.print_(f"gamma: failed: {path}: cannot read it ({e.strerror or e})")
            return None
        if not force and journal.why_pending(track, b_hash, key) is None:
            ui.print_(f"gamma: already asked: {path}")
            return journal.record(track.path, b_hash, key)
        if self._tagger is None:  # the model loads once, and only when something is to be asked
            self._tagger = TrackTagger(bundle, prompt_set, options)
        record = self._tagger.tag(decode(track))
        journal.commit(record, replace=force)
        if record["status"] != "ok":
            ui.print_(f"gamma: failed: {printable(record['error'])}")
            return record
        ui.print_(f"gamma: asked: {path}")
        return record

    def _store(self, item, prompt_set, answers: dict, apply: bool) -> None:
        for prompt in prompt_set.prompts:
            value = attribute_value(prompt, answers.get(prompt.name))
            if value is not None:
                item[ATTRIBUTE_PREFIX + prompt.name] = value
        if apply:
            for field, spec in self.config["fields"].get(dict).items():
                value = field_value(field, spec, answers)
                if value is None:
                    continue
                if field == "genre" and "genres" in type(item)._fields:  # beets 2.x: genres is the list field
                    item["genres"] = [g for g in str(value).split("; ") if g]
                else:
                    item[field] = value
        item.store()
        if apply and ui.should_write():
            item.try_write()
