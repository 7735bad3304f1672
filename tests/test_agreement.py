"""Answers that agree (gamma_rt/agreement.py): the description's key, tempo and meter against the key, tempo and
meter answers, on constructed replies (agree, disagree, unparseable), on any text (never a crash), and as
``gamma-rt eval`` reports it."""

from __future__ import annotations

import json
import random

import pytest

from gamma_rt.agreement import PAIRS, agreement_rates, agreements, bpm_in, key_in, meter_in, pair_name
from gamma_rt.synthetic_tasks import answers, eval_song

DESCRIPTION = "A piece in D minor at 96 BPM in 3/4, with piano, bass and drums; the drums enter at 7 s."
NAMES = [pair_name(p) for p in PAIRS]


def verdicts(replies: dict[str, str]) -> dict[str, bool | None]:
    return {a.name: a.agree for a in agreements(replies)}


def test_the_template_answers_of_every_song_agree_with_their_description():
    for i in range(200):
        assert verdicts(answers(eval_song(i))) == dict.fromkeys(NAMES, True)


def test_answers_that_say_the_same_agree():
    replies = {"description": DESCRIPTION, "key": '{"tonic": "D", "mode": "minor"}', "tempo": '{"bpm": 96}',
               "meter": "3/4"}
    assert verdicts(replies) == dict.fromkeys(NAMES, True)
    # a tempo within the ±4 % that scoring allows is the same claim; a flat is its sharp
    assert verdicts({"description": "in Eb major at 100 BPM", "key": "D# major", "tempo": "103"}) == {
        "description~key": True, "description~tempo": True}


def test_answers_that_contradict_each_other_disagree():
    replies = {"description": "A piece in A major at 65 BPM in 4/4, with organ.",
               "key": '{"tonic": "A", "mode": "minor"}', "tempo": '{"bpm": 125}', "meter": "3/4"}
    found = {a.name: a for a in agreements(replies)}
    assert {n: a.agree for n, a in found.items()} == dict.fromkeys(NAMES, False)
    assert found["description~tempo"].line() == "description~tempo: disagree (description 65 BPM, tempo 125 BPM)"
    assert found["description~key"].outer == "A major" and found["description~key"].inner == "A minor"


def test_an_unparseable_answer_is_neither_agreement_nor_contradiction():
    replies = {"description": "Some music.", "key": '{"tonic": "minor"}', "tempo": "fast", "meter": "3/4"}
    found = {a.name: a for a in agreements(replies)}
    assert {n: a.agree for n, a in found.items()} == dict.fromkeys(NAMES, None)
    assert found["description~meter"].line() == "description~meter: cannot tell (description unparseable, meter 3/4)"
    # a pair whose answers were not asked is not reported
    assert verdicts({"description": DESCRIPTION, "tempo": "96"}) == {"description~tempo": True}


@pytest.mark.parametrize("text, key, bpm, meter", [
    ("in a minor mood at 0 BPM", None, None, None),              # a lowercase letter is no tonic; 0 is no tempo
    ("C#-min, 120.5 bpm, 6 / 8", "C# minor", 120.5, "6/8"),
    ("Bb major at 99999 BPM in 0/4", "A# major", None, None),    # past 1000 BPM is not a tempo; 0/4 no meter
    ("G♭ Major, 1e400 BPM", "F# major", None, None),
    ("{" * 500 + "D minor" + "}" * 3, "D minor", None, None),
])
def test_description_phrases_parse_or_give_none(text, key, bpm, meter):
    assert (key_in(text), bpm_in(text), meter_in(text)) == (key, bpm, meter)


def test_no_text_crashes_the_parsers():
    rng = random.Random(0)
    alphabet = 'ABCDEFG#b♭♯ majorinBPM0123456789./{}[]":,\x00\n\u202e\ud800é'
    pieces = ['{"tonic": ', '{"bpm": ', '"mode": "minor"}', "9" * 400, "null", "[", "]"]
    for _ in range(2000):
        text = "".join(rng.choice(pieces) if rng.random() < 0.1 else rng.choice(alphabet)
                       for _ in range(rng.randrange(60)))
        replies = {"description": text, "key": text[::-1], "tempo": text, "meter": text[1:]}
        for a in agreements(replies):
            assert a.agree in (True, False, None)
            assert a.line().startswith(a.name)


def test_rates_count_every_song_and_unparseable_is_no_match():
    agree = {"description": DESCRIPTION, "key": "D minor", "tempo": "96", "meter": "3/4"}
    disagree = {"description": DESCRIPTION, "key": "F major", "tempo": "140", "meter": "4/4"}
    unread = {"description": "?", "key": "?", "tempo": "?", "meter": "?"}
    rates = agreement_rates([agree, agree, disagree, unread])
    assert set(rates) == set(NAMES)
    for name in NAMES:
        assert rates[name] == {"agreement": 0.5, "agree": 2, "disagree": 1, "unparseable": 1}
    assert agreement_rates([]) == {}


@pytest.fixture(scope="module")
def builtin_bundle(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("llama_cpp")
    from gamma_rt.demo import BUILTIN, build_bundle

    if not (BUILTIN / "model.safetensors").is_file():
        pytest.skip("no built-in model shipped")
    return build_bundle(tmp_path_factory.mktemp("demo"), fresh=False, trained=True)


def test_eval_reports_the_agreement_of_each_pair(builtin_bundle, capsys):
    from gamma_rt.cli import main

    assert main(["eval", str(builtin_bundle), "--synthetic", "1", "--threads", "1", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    replies = record["example"]["replies"]  # with one song, the example is every reply eval scored
    assert "description" in replies
    assert record["agreement"] == agreement_rates([replies])
    assert set(record["agreement"]) == set(NAMES)
    assert all(sum(r[k] for k in ("agree", "disagree", "unparseable")) == 1 for r in record["agreement"].values())
    assert main(["eval", str(builtin_bundle), "--synthetic", "1", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    for name, rate in record["agreement"].items():
        assert f"{name:<20} {rate['agreement']:>6.3f}" in text
