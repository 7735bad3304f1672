"""A bundle's chat template is untrusted code: one that divides by zero, builds a 10^12-character string or
loops for ever ends in one line naming prompt.chat_template, within the time limit, and Ctrl-C stops a
render at once (issue 23, "Hostile bundles")."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from gamma_rt import cli
from gamma_rt.errors import BundleError
from gamma_rt.runtime.chat_template import MAX_OUTPUT, TIME_LIMIT_S, render_chat_template
from gamma_rt.runtime.prompt import prompt_from_manifest

GOOD = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
        "{% else %}{% for item in m['content'] %}{% if item['type'] == 'audio' %}<sound>{% else %}{{ item['text'] }}"
        "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
PROMPT = {"audio_placeholder": "<sound>", "stop": ["<|im_end|>"]}
NESTED_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
HOSTILE = {
    "division by zero": ("{{ 1 // 0 }}", r"ZeroDivisionError"),
    "division by a zero variable": ("{% set n = 0 %}{{ 1 / n }}", r"ZeroDivisionError"),
    "10^12 characters by *": ("{{ 'x' * 1000000000000 }}", r"'\*' would build 1000000000000"),
    "10^12 characters by * of variables": ("{% set n = 1000000 %}{{ 'x' * n * n }}", r"'\*' would build"),
    "10^12 characters by a filter": ("{{ 'x'|center(1000000000000) }}", r"filter center is given 1000000000000"),
    "a huge power": ("{{ 10 ** 100000000 }}", r"an exponent of 100000000"),
    "a doubling macro": ("{% macro f(s, n) %}{% if n > 0 %}{{ f(s ~ s, n - 1) }}{% else %}{{ s|length }}"
                         "{% endif %}{% endmacro %}{{ f('x', 60) }}", r"more than 1000000"),
    "a doubling namespace": ("{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
                             "{% endfor %}{{ ns.s|length }}", r"namespace\.s builds"),
    "a huge %-format": ("{{ '%1000000000s' % 'x' }}", r"'%' has a format with a width"),
    "a huge str.format": ("{{ '{:>1000000000}'.format('x') }}", r"str\.format has a format with a width"),
    "a huge format filter": ("{{ '%1000000000s'|format('x') }}", r"filter format has a format"),
    "too much output": ("{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}", r"renders more than 1000000"),
    "endless recursion": ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", r"RecursionError"),
    "nested loops": (NESTED_LOOPS, r"ran past 2 s; refused"),
    "a syntax error": ("{% for %}", r"TemplateSyntaxError"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_template_is_refused_in_one_line_within_the_time_limit(name):
    template, message = HOSTILE[name]
    t0 = time.perf_counter()
    with pytest.raises(BundleError, match=r"^m\.json: field prompt\.chat_template ") as e:
        prompt_from_manifest({**PROMPT, "chat_template": GOOD.replace("{% for m in messages %}", template + "{% for m "
                                                                                                 "in messages %}")},
                             "m.json")
    assert "\n" not in str(e.value)
    assert re.search(message, str(e.value)), str(e.value)
    assert time.perf_counter() - t0 < TIME_LIMIT_S + 3


def test_a_good_template_renders_as_before_and_big_but_bounded_work_is_fine():
    prompt = prompt_from_manifest({**PROMPT, "chat_template": GOOD})
    assert prompt.head() == "<|im_start|>user\n"
    assert prompt.tail("Genre?") == "Genre?<|im_end|>\n<|im_start|>assistant\n"
    text = render_chat_template("{{ 'x' * 999999 }}{% for i in range(1000) %}{% endfor %}", [], {}, "m.json")
    assert len(text) == 999999 < MAX_OUTPUT


def test_the_time_limit_never_fires_after_a_render_ends():
    for _ in range(20):
        assert render_chat_template(GOOD, [{"role": "user", "content": "hi"}], {}, "m.json", time_limit_s=0.05)
    time.sleep(0.2)  # a timer that fired late would raise here, in the test's own code


def test_gamma_rt_ask_with_a_looping_template_is_one_line(tiny_bundle, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["prompt"] = {**PROMPT, "chat_template": NESTED_LOOPS + GOOD}
    path.write_text(json.dumps(manifest))
    t0 = time.perf_counter()
    assert cli.main(["ask", str(bundle), str(tmp_path / "song.wav"), "-q", "Genre?"]) == 2
    err = capsys.readouterr().err
    assert err == f"gamma-rt: error: {path}: field prompt.chat_template ran past 2 s; refused\n"
    assert time.perf_counter() - t0 < 30


def test_the_first_ctrl_c_stops_a_render():
    script = ("import sys; from gamma_rt.runtime.chat_template import render_chat_template as r\n"
              f"print('rendering', flush=True); r({NESTED_LOOPS!r}, [], {{}}, 'm.json', time_limit_s=600)")
    run = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert run.stdout.readline() == "rendering\n"
        time.sleep(0.5)
        run.send_signal(signal.SIGINT)
        t0 = time.perf_counter()
        _, err = run.communicate(timeout=20)
        assert time.perf_counter() - t0 < 5
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert "KeyboardInterrupt" in err
