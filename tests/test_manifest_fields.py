"""Every manifest field against hostile values, through the loader `gamma-rt ask` uses: each one loads or
is refused in one line naming the field, never a traceback (issue 23, "Hostile bundles")."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from gamma_rt import cli
from gamma_rt.errors import BundleError
from gamma_rt.manifest import Manifest

HOLE = "\"__hostile__\""
DEEP = "[" * 5000 + "]" * 5000
# raw JSON text put where a field's value was; NaN and Infinity are what Python's json.dumps writes
WRONG_KIND = {"text": '"7"', "list": "[]", "object": "{}", "true": "true", "null": "null", "deep": DEEP}
BAD_NUMBER = {"NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity", "1e308": "1e308", "1e400": "1e400",
              "-1": "-1", "5000 digits": "1" + "0" * 5000, "1.5": "1.5"}
NUMBER_DOMAIN = {"10^9": "1000000000", "0": "0"}  # in range for some fields (bytes), not for others
# fields the runtime never reads: any bounded JSON value is fine there
FREE = re.compile(r"^(components\.[^.]+\.extra\.(?!n_embd$|n_vocab$|external_data)|tools\.|source\.(?!family))")
# fields where null means something (no limit, no opset)
NULLABLE = {"audio.max_seconds", "components.temporal_encoder.opset", "components.global_encoder.opset",
            "components.fusion.opset", "components.projector.opset", "components.decoder.opset"}


def leaves(value, path=""):
    """(path, value) of every field of a manifest, objects and lists included."""
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaves(v, f"{path}[{i}]")


def set_raw(data: dict, path: str, raw: str) -> str:
    """The manifest's JSON text with the field at ``path`` replaced by the JSON text ``raw``."""
    data = json.loads(json.dumps(data))
    keys = re.findall(r"[^.\[\]]+|\[\d+\]", path)
    target = data
    for k in keys[:-1]:
        target = target[int(k[1:-1])] if k.startswith("[") else target[k]
    last = keys[-1]
    if last.startswith("["):
        target[int(last[1:-1])] = "__hostile__"
    else:
        target[last] = "__hostile__"
    return json.dumps(data).replace(HOLE, raw)


def outcome(bundle, text: str, song, capsys):
    """None when `gamma-rt ask` answers with this manifest, else its error message. Manifests that the
    manifest reader refuses are not asked (that is what ``ask`` does first), to keep the run short."""
    (bundle / "manifest.json").write_text(text)
    try:
        Manifest.read(bundle)
    except BundleError as e:
        return str(e)
    capsys.readouterr()
    try:
        code = cli.main(["ask", str(bundle), str(song), "-q", "Genre?", "--max-tokens", "2"])
    except Exception as e:  # noqa: BLE001 - the test's finding: a traceback
        return f"traceback:\n{type(e).__name__}: {e}"
    err = capsys.readouterr().err
    return None if code == 0 else err.removeprefix("gamma-rt: error: ").removesuffix("\n")


@pytest.fixture(scope="module")
def bundle_and_manifest(tiny_bundle, tmp_path_factory):
    bundle = tmp_path_factory.mktemp("hostile") / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    return bundle, json.loads((bundle / "manifest.json").read_text())


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    import numpy as np
    import soundfile as sf

    path = tmp_path_factory.mktemp("song") / "song.wav"
    sf.write(path, (0.1 * np.sin(np.arange(16000 * 3) / 16000 * 2 * np.pi * 440)).astype(np.float32), 16000)
    return path


def _cases(manifest):
    for path, value in leaves(manifest):
        if not path or FREE.match(path):
            continue
        refuse = dict(WRONG_KIND)
        same = {str: "text", list: "list", dict: "object"}.get(type(value))
        refuse.pop(same, None)  # text where text belongs is fine; what text is allowed is the field's own rule
        if isinstance(value, (int, float)) and not isinstance(value, bool) or path in NULLABLE:
            refuse.update(BAD_NUMBER)
            refuse.pop("1.5") if path.endswith(("_seconds",)) else None
        if path in NULLABLE:
            refuse.pop("null")
        if re.search(r"\.(inputs|outputs)\[\d+\]\.shape\[0\]$", path):
            refuse.pop("text", None)  # the batch dimension is symbolic in the graph, so any name fits it
        for name, raw in refuse.items():
            yield path, name, raw


def test_every_field_refuses_values_of_the_wrong_kind_or_range_in_one_line(bundle_and_manifest, song, capsys):
    bundle, manifest = bundle_and_manifest
    cases, failures = 0, []
    for path, name, raw in _cases(manifest):
        cases += 1
        message = outcome(bundle, set_raw(manifest, path, raw), song, capsys)
        field_named = message is not None and (path in message or _parent(path) in message or (
            path.startswith("audio.chain") and ": field " in message))  # a step renamed: what then misses it
        if message is None or "\n" in message or not field_named:
            failures.append(f"{path} = {name}: {message!r}")
    assert cases > 500
    assert not failures, f"{len(failures)} of {cases} cases:\n" + "\n".join(failures[:40])


def _parent(path: str) -> str:
    """A deep value is refused at the field that holds it (``audio.chain[0].inputs``), or, nested past the
    document's limit, named by its path down to that depth."""
    return re.split(r"\.(?=[^.]*$)|\[\d+\]$", path)[0]


def test_numbers_of_the_right_type_are_refused_in_one_line_or_answered(bundle_and_manifest, song, capsys):
    bundle, manifest = bundle_and_manifest
    for path, value in leaves(manifest):
        if isinstance(value, int) and not isinstance(value, bool) and not FREE.match(path):
            for raw in NUMBER_DOMAIN.values():
                message = outcome(bundle, set_raw(manifest, path, raw), song, capsys)
                # in the field's type, so a rule between fields may be what refuses it: it names that field
                section = path.split(".")[0]
                assert message is None or (section in message and "\n" not in message), (path, raw, message)


@pytest.mark.parametrize("path,raw,message", [
    ("audio.window_seconds", "NaN", r"field audio\.window_seconds must be a finite number"),
    ("audio.window_seconds", "Infinity", r"field audio\.window_seconds must be a finite number"),
    ("audio.window_seconds", "1e308", r"field audio\.window_seconds must be a finite number in \(0\.01, 600\]"),
    ("audio.max_seconds", "NaN", r"field audio\.max_seconds must be a finite number"),
    ("audio.max_seconds", "1e308", r"field audio\.max_seconds must be a finite number"),
    ("audio.n_mels", "1000000000", r"field audio\.n_mels must be an integer in \[1, 1024\]"),
    ("audio", '"audio"', r"field audio must be an object, got 'audio'"),
    ("components.projector", '"projector.onnx"', r"field components\.projector must be an object"),
    ("components.projector.sha256", "12345", r"field components\.projector\.sha256 must be text of 64"),
    ("components.projector.inputs[0].dtype", '"complex128"', r"inputs\[0\]\.dtype must be one of float32"),
    ("audio.chain[0].inputs", DEEP, r"field audio\.chain\[0\]\.inputs must be an object"),
    ("prompt.stop", '["' + "x" * 2_000_000 + '"]', r"field prompt\.stop\[0\] must be text of 1 to 256 characters"),
])
def test_the_issues_examples_end_in_one_line_from_gamma_rt_ask(bundle_and_manifest, tmp_path, capsys, path, raw,
                                                               message):
    bundle, manifest = bundle_and_manifest
    (bundle / "manifest.json").write_text(set_raw(manifest, path, raw))
    song = tmp_path / "missing.wav"  # the manifest is refused before the audio is opened
    assert cli.main(["ask", str(bundle), str(song), "-q", "Genre?"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gamma-rt: error: "), err
    assert re.search(message, err), err


def test_time_markers_that_build_huge_text_or_read_attributes_are_refused(bundle_and_manifest):
    from gamma_rt.runtime.prompt import prompt_from_manifest

    prompt = json.loads(json.dumps(bundle_and_manifest[1]["prompt"]))
    for marker in ("{start_s:>999999999}", "{index.__class__}", "{0}", "{missing}", "{start_s:{index}}", "{"):
        with pytest.raises(BundleError, match=r"field prompt\.time_marker"):
            prompt_from_manifest({**prompt, "time_marker": marker})
    assert prompt_from_manifest({**prompt, "time_marker": "[{start}] "}).marker(1, 30.0) == "[0:30] "


def test_a_window_too_large_for_the_front_end_is_refused():
    from gamma_rt.manifest import AudioSection

    huge = {**AudioSection().to_dict(), "window_seconds": 600, "sample_rate": 384000, "hop_length": 16384,
            "window_frames": 14062}
    with pytest.raises(BundleError, match=r"audio\.window_seconds is 600: a window of 230400000 samples"):
        AudioSection.from_dict(huge, "m.json")


def test_a_hostile_manifest_prints_no_traceback_from_the_installed_command(bundle_and_manifest, tmp_path):
    bundle, manifest = bundle_and_manifest
    (bundle / "manifest.json").write_text(set_raw(manifest, "audio.window_seconds", "NaN"))
    run = subprocess.run([sys.executable, "-m", "gamma_rt.cli", "ask", str(bundle), str(tmp_path / "a.wav"),
                          "-q", "Genre?"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"gamma-rt: error: {bundle / 'manifest.json'}: field audio.window_seconds must be a finite number in "
        "(0.01, 600], got nan"]
