"""JSON-schema answers for tagging prompts: the supported schema subset, its llama.cpp grammar, and parsing.

Every prompt's answer is constrained by a GBNF grammar generated from its JSON schema, so the text the
decoder emits is JSON of the right shape. Two things make "every record parses" hold rather than hope:

- the subset below is *bounded*: strings need ``maxLength`` (or ``enum``), arrays need ``maxItems``, so
  :func:`max_answer_bytes` gives an upper bound on the answer's length; a prompt's token budget defaults to
  that bound (a token is at least one byte), so an answer cannot be cut mid-JSON;
- :func:`parse_answer` checks the parsed value against the schema, so a grammar that was not applied shows
  up as an :class:`AnswerError`, not as a silently wrong record.

Supported: ``object`` (with ``properties``; all required unless ``required`` says otherwise), ``string``
(``maxLength`` or ``enum``; ``minLength``), ``integer``, ``boolean``, ``array`` (``items`` + ``maxItems``;
``minItems``), and ``enum`` of strings. ``number`` is left out on purpose: llama.cpp's grammar for it has an
unbounded fraction. Any other keyword that constrains a value (``$ref``, ``pattern``, ``anyOf``...) is refused;
annotations (``title``, ``description``...) are kept and change nothing.

A schema comes from a client (serve) or a prompt file (tag), so it is bounded too (:class:`SchemaBounds`)
before a grammar is made from it: past those bounds llama.cpp refuses the grammar, crashes on it, or takes
seconds per token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from gamma_rt.errors import AnswerError, PromptSetError

# Bytes that llama.cpp's json_schema_to_gbnf allows around values: its ``space`` rule is ``" "?``.
_SPACE = 1
# One string character is at most a 6-byte escape (\\uXXXX); a UTF-8 character is at most 4 bytes.
_CHAR_BYTES = 6
# The grammar's integer is an optional sign and at most 16 digits.
_INTEGER_BYTES = 1 + 16


@dataclass(frozen=True)
class SchemaBounds:
    """How much a schema may ask of llama.cpp's grammar engine. Measured on llama-cpp-python 0.3.36 (its
    json_schema_to_gbnf and llama_sampler_init_grammar), tiny preset vocabulary, 2 loaded cores:

    - a string of maxLength n (an array of maxItems n) becomes n nested optional groups. llama.cpp refuses
      more than 1000 ("number of rules ... exceeds sane defaults", from 1001 on), and from about n = 19,000 its
      recursive parser overflows an 8 MiB thread stack (SIGSEGV: the server or the tag run dies);
    - an enum of n strings is one alternation: 256 strings of 1,000 characters build in 11 ms and cost 0.6 ms
      a token; 10,000 strings, 0.4 s and 55 ms a token; 100,000 strings, 76 s and 4.5 s a token;
    - the grammar's size sets its build time: 256 KiB of GBNF (32 strings of maxLength 1000) 0.14 s, 1 MiB
      (128 of them) 0.55 s; either costs under 1 ms a token. A real vocabulary (150k tokens, not 1k) costs
      more per token, not more to build. The build runs on a request's own thread (engine/scheduler.py).
    """

    max_length: int = 1000  # maxLength, minLength, maxItems, minItems
    max_enum: int = 256  # strings in one enum
    max_chars: int = 1000  # characters of one enum string or property name
    max_depth: int = 8  # objects and arrays nested
    max_nodes: int = 256  # schemas in all: the root, each property, each items, each enum
    max_grammar_bytes: int = 512 * 1024  # the GBNF text made from the schema

    def describe(self) -> str:
        return (f"maxLength/maxItems up to {self.max_length}, {self.max_enum} enum strings of up to "
                f"{self.max_chars} characters, {self.max_depth} levels, {self.max_nodes} schemas, "
                f"{self.max_grammar_bytes // 1024} KiB of grammar")


BOUNDS = SchemaBounds()
# Keywords that describe a value without constraining it; kept as they are (the grammar ignores them).
_ANNOTATIONS = {"title", "description", "$schema", "$id", "$comment", "examples", "default", "deprecated",
                "readOnly", "writeOnly"}
_KEYWORDS = {"enum": {"enum", "type"}, "object": {"type", "properties", "required", "additionalProperties"},
             "string": {"type", "maxLength", "minLength"}, "array": {"type", "items", "maxItems", "minItems"},
             "integer": {"type"}, "boolean": {"type"}}


def normalize_schema(schema: object, where: str, bounds: SchemaBounds = BOUNDS) -> dict:
    """Check ``schema`` is in the bounded subset and within ``bounds``; return a copy with objects'
    ``required`` and ``additionalProperties: false`` filled in. Raises PromptSetError naming ``where`` and the
    field. The checks go top down and stop at ``max_depth``, so a schema nested thousands deep is refused
    without recursing through it."""
    nodes = [0]
    return _normalize(schema, where, bounds, 0, nodes)


def _normalize(schema: object, where: str, bounds: SchemaBounds, depth: int, nodes: list[int]) -> dict:
    if not isinstance(schema, dict):
        raise PromptSetError(f"{where}: a JSON schema must be an object, got {type(schema).__name__}")
    nodes[0] += 1
    if nodes[0] > bounds.max_nodes:
        raise PromptSetError(f"{where}: the schema has more than {bounds.max_nodes} sub-schemas "
                             f"(bounds: {bounds.describe()})")
    schema = dict(schema)
    kind = "enum" if "enum" in schema else schema.get("type")
    if kind in _KEYWORDS:
        unknown = sorted(set(schema) - _KEYWORDS[kind] - _ANNOTATIONS)
        if unknown:
            raise PromptSetError(f"{where}.{unknown[0]}: not supported in a {kind} schema (supported: "
                                 f"{', '.join(sorted(_KEYWORDS[kind]))})")
    if kind in ("object", "array") and depth >= bounds.max_depth:
        raise PromptSetError(f"{where}: objects and arrays nested more than {bounds.max_depth} deep")
    if kind == "enum":
        _check_enum(schema, where, bounds)
    elif kind == "object":
        props = schema.get("properties")
        if not isinstance(props, dict) or not props:
            raise PromptSetError(f"{where}.properties: an object schema needs at least one property")
        long = next((k for k in props if len(k) > bounds.max_chars), None)
        if long is not None:
            raise PromptSetError(f"{where}.properties: a property name is longer than {bounds.max_chars} characters")
        schema["properties"] = {k: _normalize(v, f"{where}.properties.{k}", bounds, depth + 1, nodes)
                                for k, v in props.items()}
        required = schema.setdefault("required", list(props))
        unknown = set(required) - set(props) if isinstance(required, list) else None
        if unknown is None or unknown:
            raise PromptSetError(f"{where}.required: must list property names (unknown: {sorted(unknown or [])})")
        schema["additionalProperties"] = False
    elif kind == "string":
        _check_lengths(schema, where, "maxLength", "minLength", "a string needs a positive maxLength (or an enum)",
                       bounds)
    elif kind == "array":
        _check_lengths(schema, where, "maxItems", "minItems", "an array needs a positive maxItems", bounds)
        schema["items"] = _normalize(schema.get("items"), f"{where}.items", bounds, depth + 1, nodes)
    elif kind not in ("integer", "boolean"):
        raise PromptSetError(f"{where}.type: {kind!r} is not supported (object, string, integer, boolean, "
                             "array or enum)")
    return schema


def _check_enum(schema: dict, where: str, bounds: SchemaBounds) -> None:
    values = schema["enum"]
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise PromptSetError(f"{where}.enum: must be a non-empty list of strings")
    if schema.get("type", "string") != "string":
        raise PromptSetError(f"{where}.type: an enum is of strings, got type {schema['type']!r}")
    if len(values) > bounds.max_enum:
        raise PromptSetError(f"{where}.enum: {len(values)} strings; at most {bounds.max_enum} "
                             f"(bounds: {bounds.describe()})")
    if any(len(v) > bounds.max_chars for v in values):
        raise PromptSetError(f"{where}.enum: a string longer than {bounds.max_chars} characters")


def _check_lengths(schema: dict, where: str, most: str, least: str, need: str, bounds: SchemaBounds) -> None:
    """``most`` (maxLength, maxItems) is required, 1..max_length; ``least`` is optional, 0..``most``."""
    limit = schema.get(most)
    if not _is_int(limit) or limit < 1:
        raise PromptSetError(f"{where}.{most}: {need} so the answer's length is bounded")
    if limit > bounds.max_length:
        raise PromptSetError(f"{where}.{most}: {limit} is more than {bounds.max_length}, the most llama.cpp's "
                             f"grammar takes (bounds: {bounds.describe()})")
    low = schema.get(least, 0)
    if not _is_int(low) or not 0 <= low <= limit:
        raise PromptSetError(f"{where}.{least}: must be an integer from 0 to {most} ({limit}), got {low!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def max_answer_bytes(schema: dict) -> int:
    """Upper bound on the UTF-8 length of any text the schema's grammar accepts (normalized schema)."""
    if "enum" in schema:
        return max(len(json.dumps(v).encode()) for v in schema["enum"]) + _SPACE
    kind = schema["type"]
    if kind == "boolean":
        return len("false") + _SPACE
    if kind == "integer":
        return _INTEGER_BYTES + _SPACE
    if kind == "string":
        return 2 + _CHAR_BYTES * schema["maxLength"] + _SPACE
    if kind == "array":
        n = schema["maxItems"]
        return 1 + _SPACE + n * max_answer_bytes(schema["items"]) + (n - 1) * (1 + _SPACE) + 1 + _SPACE
    # object: {"key": value, ...}
    body = sum(len(json.dumps(k)) + _SPACE + 1 + _SPACE + max_answer_bytes(v) for k, v in schema["properties"].items())
    return 1 + _SPACE + body + (len(schema["properties"]) - 1) * (1 + _SPACE) + 1 + _SPACE


# A string character: printable ASCII but '"' and '\', or an escape; non-ASCII text is written as \uXXXX
# (not a surrogate). Why not llama.cpp's own ``[^"\\]``: its grammar decodes UTF-8 leniently, so it lets
# through bytes that are not UTF-8 (overlong forms, surrogates, past U+10FFFF; seen from the tiny model),
# which Python decodes to several U+FFFD each (breaking maxLength), and raw control characters, which
# strict JSON rejects. With ASCII only, every accepted text decodes and parses exactly as the grammar counts.
_CHAR_RULE = ('char ::= [ !#-\\[\\]-~] | "\\\\" (["\\\\/bfnrt] | '
              '"u" ([0-9a-cA-Ce-fE-F] [0-9a-fA-F] | [dD] [0-7]) [0-9a-fA-F] [0-9a-fA-F])')


def to_gbnf(schema: dict, where: str = "schema", bounds: SchemaBounds = BOUNDS) -> str:
    """The llama.cpp grammar (GBNF text) that accepts exactly the JSON texts of ``schema`` (normalized).
    PromptSetError naming ``where`` when it is larger than ``bounds`` allows."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    order = list(schema["properties"]) if schema.get("type") == "object" else None
    lines = json_schema_to_gbnf(json.dumps(schema), prop_order=order).splitlines()
    grammar = "\n".join(_CHAR_RULE if line.startswith("char ::= ") else line for line in lines) + "\n"
    if len(grammar) > bounds.max_grammar_bytes:
        raise PromptSetError(f"{where}: its grammar would be {len(grammar) // 1024} KiB; at most "
                             f"{bounds.max_grammar_bytes // 1024} KiB (bounds: {bounds.describe()})")
    return grammar


def parse_answer(text: str, schema: dict, prompt: str):
    """JSON value of a constrained answer, checked against ``schema``; AnswerError names the prompt."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise AnswerError(f"answer to {prompt!r} is not JSON ({e.msg} at char {e.pos}): {text[:80]!r}") from None
    problem = schema_violation(value, schema, "answer")
    if problem:
        raise AnswerError(f"answer to {prompt!r}: {problem}")
    return value


def schema_violation(value, schema: dict, where: str) -> str | None:
    """First way ``value`` breaks the (normalized) schema, or None."""
    if "enum" in schema:
        return None if value in schema["enum"] else f"{where} {value!r} is not one of {schema['enum']}"
    kind = schema["type"]
    expected = {"object": dict, "array": list, "string": str, "boolean": bool}.get(kind)
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, expected)
    if not ok:
        return f"{where} should be {kind}, got {type(value).__name__}"
    if kind == "string" and not schema.get("minLength", 0) <= len(value) <= schema["maxLength"]:
        return f"{where} has {len(value)} characters, not {schema.get('minLength', 0)} to {schema['maxLength']}"
    if kind == "array":
        if not schema.get("minItems", 0) <= len(value) <= schema["maxItems"]:
            return f"{where} has {len(value)} items, not {schema.get('minItems', 0)} to {schema['maxItems']}"
        for i, item in enumerate(value):
            problem = schema_violation(item, schema["items"], f"{where}[{i}]")
            if problem:
                return problem
    if kind == "object":
        missing = [k for k in schema["required"] if k not in value]
        extra = [k for k in value if k not in schema["properties"]]
        if missing or extra:
            return f"{where} has missing keys {missing} / unexpected keys {extra}"
        for k, v in value.items():
            problem = schema_violation(v, schema["properties"][k], f"{where}.{k}")
            if problem:
                return problem
    return None
