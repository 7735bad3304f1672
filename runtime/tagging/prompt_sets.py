"""Tag prompt sets: the questions asked about every track, each with a JSON schema for its answer.

A prompt set is a TOML file (or YAML, if PyYAML is installed) like ``default_prompts.toml`` beside this
module. Its hash covers everything that changes the answers (questions, schemas, token budgets, sampling),
so the journal knows which tracks a new prompt set still has to ask.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from gamma_rt.errors import PromptSetError

from .file_tags import TAG_FIELDS
from .schema_grammar import max_answer_bytes, normalize_schema, to_gbnf

DEFAULT_PROMPTS = Path(__file__).with_name("default_prompts.toml")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SAMPLING_FIELDS = {"temperature": float, "top_k": int, "top_p": float, "seed": int}
# A question is a sentence or a paragraph. A 1 MB one made `tag` size a 2.4M-token context and prefill it for
# minutes on every track; past this it is refused before any track is read.
MAX_QUESTION_CHARS = 4000


@dataclass(frozen=True)
class Prompt:
    """One question. ``max_tokens`` defaults to the schema's byte bound, so answers are never cut."""

    name: str
    question: str
    schema: dict
    max_tokens: int
    tag: str | None = None
    tag_key: str | None = None

    @property
    def grammar(self) -> str:
        return to_gbnf(self.schema)

    def tag_value(self, answer) -> str | None:
        """The text --write-tags puts into the file's ``tag`` field, from this prompt's parsed answer."""
        value = answer.get(self.tag_key) if isinstance(answer, dict) and self.tag_key else answer
        if isinstance(value, list):
            value = "; ".join(str(v) for v in value)
        return None if value in (None, "") else str(value)


@dataclass(frozen=True)
class PromptSet:
    name: str
    prompts: tuple[Prompt, ...]
    sampling: dict = field(default_factory=dict)
    source: str = ""

    @property
    def hash(self) -> str:
        """sha256 of what changes answers; formatting, comments and tag mappings do not count."""
        content = {
            "prompts": [[p.name, p.question, p.schema, p.max_tokens] for p in self.prompts],
            "sampling": self.sampling,
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    @classmethod
    def default(cls) -> "PromptSet":
        return cls.load(DEFAULT_PROMPTS)

    @classmethod
    def load(cls, path: str | Path) -> "PromptSet":
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise PromptSetError(f"{path}: cannot read prompt set ({e.strerror})") from None
        data = _parse(path, text)
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: dict, where: str) -> "PromptSet":
        if not isinstance(data, dict):
            raise PromptSetError(f"{where}: a prompt set must be a table/mapping")
        unknown = set(data) - {"name", "sampling", "prompt"}
        if unknown:
            raise PromptSetError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        items = data.get("prompt")
        if not isinstance(items, list) or not items:
            raise PromptSetError(f"{where}: field 'prompt' must be a non-empty list of [[prompt]] tables")
        prompts = tuple(_prompt(item, f"{where}: prompt[{i}]") for i, item in enumerate(items))
        names = [p.name for p in prompts]
        if len(set(names)) != len(names):
            raise PromptSetError(f"{where}: prompt names must be unique (got {names})")
        return cls(str(data.get("name", Path(where).stem)), prompts, _sampling(data.get("sampling", {}), where), where)


def _parse(path: Path, text: str) -> dict:
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ModuleNotFoundError:
            raise PromptSetError(f"{path}: YAML prompt sets need PyYAML (pip install 'gamma-rt[tag]')") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise PromptSetError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        except RecursionError:  # the parsers recurse per level of nesting
            raise PromptSetError(f"{path}: nested too deeply to read") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PromptSetError(f"{path}: not valid TOML ({e})") from None
    except RecursionError:
        raise PromptSetError(f"{path}: nested too deeply to read") from None


def _prompt(item: object, where: str) -> Prompt:
    if not isinstance(item, dict):
        raise PromptSetError(f"{where}: must be a table")
    unknown = set(item) - {"name", "question", "schema", "max_tokens", "tag", "tag_key"}
    if unknown:
        raise PromptSetError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise PromptSetError(f"{where}.name: must be a lowercase identifier, got {name!r}")
    where = f"{where.rsplit(':', 1)[0]}: prompt '{name}'"
    question = item.get("question")
    if not isinstance(question, str) or not question.strip():
        raise PromptSetError(f"{where}.question: must be a non-empty string")
    if len(question) > MAX_QUESTION_CHARS:
        raise PromptSetError(f"{where}.question: {len(question)} characters, at most {MAX_QUESTION_CHARS}")
    schema = item.get("schema")
    if isinstance(schema, str):  # a JSON text is accepted too: easier to paste than TOML tables
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise PromptSetError(f"{where}.schema: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise PromptSetError(f"{where}.schema: nested too deeply to read") from None
    schema = normalize_schema(schema, f"{where}.schema")
    to_gbnf(schema, f"{where}.schema")  # its size is bounded too: refused here, not on the first track
    bound = max_answer_bytes(schema)
    max_tokens = item.get("max_tokens", bound)
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise PromptSetError(f"{where}.max_tokens: must be a positive integer")
    tag, tag_key = item.get("tag"), item.get("tag_key")
    if tag is not None and tag not in TAG_FIELDS:
        raise PromptSetError(f"{where}.tag: must be one of {', '.join(TAG_FIELDS)}, got {tag!r}")
    if tag_key is not None and tag_key not in schema.get("properties", {}):
        raise PromptSetError(f"{where}.tag_key: {tag_key!r} is not a property of the answer schema")
    return Prompt(name, question.strip(), schema, max_tokens, tag, tag_key)


def _sampling(data: object, where: str) -> dict:
    if not isinstance(data, dict):
        raise PromptSetError(f"{where}: field 'sampling' must be a table")
    out = {}
    for key, value in data.items():
        kind = _SAMPLING_FIELDS.get(key)
        if kind is None:
            raise PromptSetError(f"{where}: sampling.{key} is not a sampling field ({', '.join(_SAMPLING_FIELDS)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PromptSetError(f"{where}: sampling.{key} must be a number")
        out[key] = kind(value)
    return out
