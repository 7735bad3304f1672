"""Prompt sets and their answer grammars: every answer the grammar allows parses against the schema."""

from __future__ import annotations

import json

import pytest
from llama_cpp import LlamaGrammar

from gamma_rt.errors import AnswerError, PromptSetError
from gamma_rt.runtime.tagging.prompt_sets import PromptSet
from gamma_rt.runtime.tagging.schema_grammar import max_answer_bytes, normalize_schema, parse_answer, schema_violation


def test_default_prompt_set_covers_the_issue_and_its_grammars_compile_in_llama_cpp():
    ps = PromptSet.default()
    names = [p.name for p in ps.prompts]
    assert names == ["genre", "mood", "instruments", "tempo", "key", "vocals", "structure", "caption"]
    assert {p.tag for p in ps.prompts if p.tag} == {"genre", "mood", "caption"}
    for p in ps.prompts:
        assert LlamaGrammar.from_string(p.grammar, verbose=False) is not None
        assert p.max_tokens == max_answer_bytes(p.schema)


def _longest_answer(schema: dict):
    """A value that uses every bound to the full (and the longest escape for each string character)."""
    if "enum" in schema:
        return max(schema["enum"], key=lambda v: len(json.dumps(v)))
    kind = schema["type"]
    if kind == "object":
        return {k: _longest_answer(v) for k, v in schema["properties"].items()}
    if kind == "array":
        return [_longest_answer(schema["items"])] * schema["maxItems"]
    if kind == "string":
        return "\x01" * schema["maxLength"]  # json.dumps writes \u0001: 6 bytes per character
    return {"integer": -(10**15), "boolean": False}[kind]


def test_answer_byte_bound_holds_for_the_longest_answer_each_default_schema_allows():
    for p in PromptSet.default().prompts:
        value = _longest_answer(p.schema)
        text = json.dumps(value, separators=(", ", ": "))  # the grammar's optional spaces, all taken
        assert schema_violation(value, p.schema, "v") is None
        assert len(text.encode()) <= p.max_tokens, p.name
        assert parse_answer(text, p.schema, p.name) == value


def test_parse_answer_rejects_truncated_and_off_schema_answers():
    schema = normalize_schema({"type": "object", "properties": {"bpm": {"type": "integer"}}}, "t")
    assert parse_answer('{"bpm": 120}', schema, "tempo") == {"bpm": 120}
    with pytest.raises(AnswerError, match="'tempo' is not JSON"):
        parse_answer('{"bpm": 1', schema, "tempo")
    with pytest.raises(AnswerError, match="answer.bpm should be integer"):
        parse_answer('{"bpm": "fast"}', schema, "tempo")
    with pytest.raises(AnswerError, match="missing keys"):
        parse_answer("{}", schema, "tempo")


def test_prompt_set_hash_ignores_formatting_and_tags_but_not_questions(tmp_path):
    base = 'name = "x"\n[[prompt]]\nname = "genre"\nquestion = "Genre?"\ntag = "genre"\n' \
           'schema = { type = "string", maxLength = 10 }\n'
    a, b, c = tmp_path / "a.toml", tmp_path / "b.yaml", tmp_path / "c.toml"
    a.write_text(base)
    b.write_text("name: y\nprompt:\n  - name: genre\n    question: Genre?\n"
                 "    schema: {type: string, maxLength: 10}\n")
    c.write_text(base.replace("Genre?", "Which genre?"))
    assert PromptSet.load(a).hash == PromptSet.load(b).hash
    assert PromptSet.load(a).hash != PromptSet.load(c).hash


@pytest.mark.parametrize("body, message", [
    ('[[prompt]]\nname = "g"\nquestion = "q"\nschema = { type = "string" }\n', r"schema\.maxLength"),
    ('[[prompt]]\nname = "g"\nquestion = "q"\nschema = { type = "number" }\n', r"schema\.type: 'number'"),
    ('[[prompt]]\nname = "g"\nquestion = "q"\nschema = { type = "array", items = { type = "boolean" } }\n',
     r"schema\.maxItems"),
    ('[[prompt]]\nname = "G!"\nquestion = "q"\nschema = { type = "boolean" }\n', r"prompt\[0\]\.name"),
    ('[[prompt]]\nname = "g"\nquestion = "q"\ntag = "artist"\nschema = { type = "boolean" }\n', r"'g'\.tag"),
    ('[[prompt]]\nname = "g"\nquestion = "q"\nschema = { type = "boolean" }\n[sampling]\nheat = 1\n',
     r"sampling\.heat"),
    ('[[prompt]]\nname = "g"\nquestion = "q"\nschema = "{not json"\n', r"'g'\.schema: not valid JSON"),
    ('prompt = [\n', "not valid TOML"),
    pytest.param('[[prompt]]\nname = "g"\nquestion = "' + "genre? " * 150_000 + '"\nschema = { type = "boolean" }\n',
                 r"'g'\.question: 1050000 characters, at most 4000", id="a-1-MB-question"),
    pytest.param('[[prompt]]\nname = "g"\nquestion = "q"\nschema = ' + "{ a = " * 5000 + "1" + " }" * 5000 + "\n",
                 "nested too deeply to read", id="toml-nested-5000-deep"),
    pytest.param('[[prompt]]\nname = "g"\nquestion = "q"\nschema = \'' + '{"a": ' * 100_000 + "1" + "}" * 100_000
                 + "\'\n", r"'g'\.schema: nested too deeply to read", id="json-schema-nested-100000-deep"),
])
def test_bad_prompt_set_raises_one_line_naming_file_and_field(tmp_path, body, message):
    path = tmp_path / "mine.toml"
    path.write_text(body)
    with pytest.raises(PromptSetError, match=message) as info:
        PromptSet.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_tag_value_joins_lists_and_picks_the_tag_key():
    ps = PromptSet.default()
    mood = next(p for p in ps.prompts if p.name == "mood")
    genre = next(p for p in ps.prompts if p.name == "genre")
    assert mood.tag_value({"moods": ["calm", "dark"]}) == "calm; dark"
    assert genre.tag_value({"genre": "jazz", "subgenres": []}) == "jazz"
    assert mood.tag_value({"moods": []}) is None
