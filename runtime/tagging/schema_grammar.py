"""JSON-schema answers for tagging prompts: the supported schema subset, its llama.cpp grammar, and parsing.

Every prompt's answer is constrained by a GBNF grammar generated from its JSON schema, so the text the
decoder emits is JSON of the right shape. Two things make "every record parses" hold rather than hope:

- the subset below is *bounded*: strings need ``maxLength`` (or ``enum``), arrays need ``maxItems``, so
  :func:`max_answer_bytes` gives an upper bound on the answer's length; a prompt's token budget defaults to
  that bound (a token is at least one byte), so an answer cannot be cut mid-JSON;
- :func:`parse_answer` checks the parsed value against the schema, so a grammar that was not applied shows
  up as an :class:`AnswerError`, not as a silently wrong record.

Supported: ``object`` (with ``properties``; all required unless ``required`` says otherwise), ``string``
(``maxLength`` or ``enum``), ``integer``, ``boolean``, ``array`` (``items`` + ``maxItems``), and ``enum`` of
strings. ``number`` is left out on purpose: llama.cpp's grammar for it has an unbounded fraction.
"""

from __future__ import annotations

import json

from gamma_rt.errors import AnswerError, PromptSetError

# Bytes that llama.cpp's json_schema_to_gbnf allows around values: its ``space`` rule is ``" "?``.
_SPACE = 1
# One string character is at most a 6-byte escape (\\uXXXX); a UTF-8 character is at most 4 bytes.
_CHAR_BYTES = 6
# The grammar's integer is an optional sign and at most 16 digits.
_INTEGER_BYTES = 1 + 16


def normalize_schema(schema: object, where: str) -> dict:
    """Check ``schema`` is in the bounded subset; return a copy with objects' ``required`` and
    ``additionalProperties: false`` filled in. Raises PromptSetError naming ``where`` and the field."""
    if not isinstance(schema, dict):
        raise PromptSetError(f"{where}: a JSON schema must be an object, got {type(schema).__name__}")
    schema = dict(schema)
    if "enum" in schema:
        values = schema["enum"]
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise PromptSetError(f"{where}.enum: must be a non-empty list of strings")
        return schema
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties")
        if not isinstance(props, dict) or not props:
            raise PromptSetError(f"{where}.properties: an object schema needs at least one property")
        schema["properties"] = {k: normalize_schema(v, f"{where}.properties.{k}") for k, v in props.items()}
        required = schema.setdefault("required", list(props))
        unknown = set(required) - set(props) if isinstance(required, list) else None
        if unknown is None or unknown:
            raise PromptSetError(f"{where}.required: must list property names (unknown: {sorted(unknown or [])})")
        schema["additionalProperties"] = False
    elif kind == "string":
        limit = schema.get("maxLength")
        if not isinstance(limit, int) or limit < 1:
            raise PromptSetError(f"{where}.maxLength: a string needs a positive maxLength (or an enum) so "
                                 "the answer's length is bounded")
    elif kind == "array":
        limit = schema.get("maxItems")
        if not isinstance(limit, int) or limit < 1:
            raise PromptSetError(f"{where}.maxItems: an array needs a positive maxItems so the answer's "
                                 "length is bounded")
        schema["items"] = normalize_schema(schema.get("items"), f"{where}.items")
    elif kind not in ("integer", "boolean"):
        raise PromptSetError(f"{where}.type: {kind!r} is not supported (object, string, integer, boolean, "
                             "array or enum)")
    return schema


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


def to_gbnf(schema: dict) -> str:
    """The llama.cpp grammar (GBNF text) that accepts exactly the JSON texts of ``schema``."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    order = list(schema["properties"]) if schema.get("type") == "object" else None
    lines = json_schema_to_gbnf(json.dumps(schema), prop_order=order).splitlines()
    return "\n".join(_CHAR_RULE if line.startswith("char ::= ") else line for line in lines) + "\n"


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
    if kind == "string" and len(value) > schema["maxLength"]:
        return f"{where} is longer than maxLength {schema['maxLength']}"
    if kind == "array":
        if len(value) > schema["maxItems"]:
            return f"{where} has more than maxItems {schema['maxItems']}"
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
