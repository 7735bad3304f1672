"""The runtime's parts that need no model: import hygiene, prompt pieces, the encode-ahead thread, the cache."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import threading

import numpy as np
import pytest

import gamma_rt.runtime
from gamma_rt.errors import AudioError, BundleError
from gamma_rt.runtime.embed import _ahead
from gamma_rt.runtime.embed_cache import EmbeddingCache
from gamma_rt.runtime.prompt import ChatPrompt
from gamma_rt.runtime.timings import StageTimes

PROMPT = {
    "audio_start": "<|audio_start|>", "audio_token": "<|audio_pad|>", "audio_end": "<|audio_end|>",
    "time_marker": "", "system": "",
    "user_template": "<|im_start|>user\n{audio}\n{question}<|im_end|>\n<|im_start|>assistant\n",
    "stop": ["<|im_end|>", "<|endoftext|>"],
}


def test_runtime_imports_neither_torch_nor_transformers():
    modules = sorted(m.name for m in pkgutil.iter_modules(gamma_rt.runtime.__path__))
    assert {"pipeline", "backends", "ort_backend", "embed", "prompt", "options", "commands"} <= set(modules)
    script = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module('gamma_rt.runtime.' + m)\n"
        "print([m for m in sys.modules if m.startswith('gamma_rt.export') or m.split('.')[0] in ('torch', 'transformers')])"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_prompt_prefix_holds_everything_before_the_question():
    p = ChatPrompt.from_manifest(PROMPT)
    assert p.head() == "<|im_start|>user\n<|audio_start|>"
    assert p.tail("Genre?") == "<|audio_end|>\nGenre?<|im_end|>\n<|im_start|>assistant\n"
    # the whole user turn is the template with {audio} filled in
    whole = p.head() + "AUDIO" + p.tail("Genre?")
    assert whole == PROMPT["user_template"].format(audio="<|audio_start|>AUDIO<|audio_end|>", question="Genre?")


def test_system_turn_and_follow_up_turn():
    p = ChatPrompt.from_manifest({**PROMPT, "system": "You are a musicologist."})
    assert p.head().startswith("<|im_start|>system\nYou are a musicologist.<|im_end|>\n<|im_start|>user\n")
    assert p.follow_up("And the tempo?") == "<|im_end|>\n<|im_start|>user\nAnd the tempo?<|im_end|>\n<|im_start|>assistant\n"


def test_time_markers_only_between_windows():
    p = ChatPrompt.from_manifest({**PROMPT, "time_marker": "<t {start} {start_s:.0f}s #{index}>"})
    assert p.marker(0, 0.0) == ""
    assert p.marker(1, 30.0) == "<t 0:30 30s #1>"
    assert p.marker(5, 150.0) == "<t 2:30 150s #5>"
    assert ChatPrompt.from_manifest(PROMPT).marker(3, 90.0) == ""


@pytest.mark.parametrize("template,field", [
    ("{question} {audio}", "puts {question} before {audio}"),
    ("{audio} only", "must hold {audio} and {question} once each"),
])
def test_unusable_prompt_template_names_the_field(template, field):
    with pytest.raises(BundleError, match="prompt.user_template") as e:
        ChatPrompt.from_manifest({**PROMPT, "user_template": template}, "b/manifest.json")
    assert field in str(e.value) and "b/manifest.json" in str(e.value)


def test_missing_prompt_field_names_it():
    bad = dict(PROMPT)
    del bad["audio_end"]
    with pytest.raises(BundleError, match="prompt.audio_end"):
        ChatPrompt.from_manifest(bad)


def test_encode_ahead_yields_in_order_and_runs_one_item_ahead():
    produced = []

    def items():
        for i in range(5):
            produced.append(i)
            yield i

    got = []
    for item in _ahead(items()):
        got.append(item)
    assert got == list(range(5)) and produced == list(range(5))


def test_encode_ahead_reraises_the_workers_error_with_its_type():
    def items():
        yield 1
        raise AudioError("song.flac: truncated")

    with pytest.raises(AudioError, match="truncated"):
        list(_ahead(items()))


def test_encode_ahead_stops_its_worker_when_the_consumer_stops_early():
    def items():
        i = 0
        while True:
            yield i
            i += 1

    before = threading.active_count()
    for item in _ahead(items()):
        if item == 3:
            break
    assert threading.active_count() == before


def test_embedding_cache_round_trip_and_key_depends_on_samples_bundle_and_precision(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text('{"schema_version": 1}')
    cache = EmbeddingCache(tmp_path / "cache", bundle, "fp32")
    samples = np.linspace(-1, 1, 1000, dtype=np.float32)
    key = cache.key(samples)
    assert cache.get(key) is None and cache.misses == 1
    embd = np.random.default_rng(0).standard_normal((750, 64)).astype(np.float32)
    cache.put(key, embd)
    np.testing.assert_array_equal(cache.get(key), embd)
    assert cache.hits == 1
    assert cache.key(samples * 0.5) != key
    assert EmbeddingCache(tmp_path / "cache", bundle, "fp16").key(samples) != key
    (bundle / "manifest.json").write_text('{"schema_version": 1, "changed": true}')
    assert EmbeddingCache(tmp_path / "cache", bundle, "fp32").key(samples) != key


def test_damaged_cache_entry_is_recomputed_not_trusted(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    cache = EmbeddingCache(tmp_path / "cache", bundle, "fp32")
    key = cache.key(np.zeros(10, np.float32))
    (cache.folder / f"{key}.npy").write_bytes(b"\x93NUMPY garbage")
    assert cache.get(key) is None


def test_stage_times_sum_calls_and_keep_display_order():
    t = StageTimes()
    t.add("decode", 5.0)
    t.add("temporal_encoder", 2.0)
    t.add("temporal_encoder", 3.0)
    t.add("front_end", 1.0)
    assert [r[0] for r in t.rows()] == ["front_end", "temporal_encoder", "decode"]
    assert t.to_dict()["temporal_encoder"] == {"ms": 5.0, "calls": 2}
