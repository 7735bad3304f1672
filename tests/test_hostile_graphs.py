"""Hostile audio graphs in a real tiny bundle: a projector replaced by one that renames its input, changes
its dtype or rank, allocates without bound, loops 2^62 times, runs far past the time limit, or returns 0 or 150,000
tokens or NaN. Each ends in one line (or Ctrl-C / the time limit stops it), never a traceback or a hang
(issue 23, "Hostile bundles")."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from gamma_rt import cli  # noqa: E402
from gamma_rt.errors import BundleError  # noqa: E402
from gamma_rt.hashing import sha256_file  # noqa: E402

TOKENS, WIDTH, IN_TOKENS = 750, 64, 1500


def _value(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def _const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _pool(src="fused", out="embeddings"):
    """The tiny projector's shape: (batch, 1500, 64) -> (batch, 750, 64), a mean over token pairs."""
    return [helper.make_node("Reshape", [src, "pairs"], ["paired"]),
            helper.make_node("ReduceMean", ["paired"], [out], axes=[2], keepdims=0)], \
        [_const("pairs", np.array([-1, TOKENS, 2, WIDTH], np.int64))]


def projector(nodes, inits, inputs=None, out_shape=("batch", TOKENS, WIDTH)):
    inputs = inputs or [_value("fused", TensorProto.FLOAT, ["batch", IN_TOKENS, WIDTH])]
    graph = helper.make_graph(nodes, "projector", inputs, [_value("embeddings", TensorProto.FLOAT, list(out_shape))],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def renamed():
    nodes, inits = _pool("fused_renamed")
    return projector(nodes, inits, [_value("fused_renamed", TensorProto.FLOAT, ["batch", IN_TOKENS, WIDTH])])


def half_precision():
    nodes, inits = _pool("as_float")
    return projector([helper.make_node("Cast", ["fused"], ["as_float"], to=TensorProto.FLOAT), *nodes], inits,
                     [_value("fused", TensorProto.FLOAT16, ["batch", IN_TOKENS, WIDTH])])


def flat_input():
    nodes, inits = _pool()
    return projector(nodes, inits, [_value("fused", TensorProto.FLOAT, ["batch", IN_TOKENS * WIDTH])])


def huge_allocation(scale=(2**20, 2**20, 1)):
    """(batch, 1500, 64) x ``scale`` floats (2^70 bytes by default), sized at run time so no optimizer
    folds it away."""
    nodes, inits = _pool(out="pooled")
    nodes += [helper.make_node("Shape", ["fused"], ["shape"]), helper.make_node("Mul", ["shape", "big"], ["huge"]),
              helper.make_node("ConstantOfShape", ["huge"], ["block"]),
              helper.make_node("ReduceSum", ["block"], ["total"], keepdims=0),
              helper.make_node("Add", ["pooled", "total"], ["embeddings"])]
    return projector(nodes, inits + [_const("big", np.array(scale, np.int64))])


def loop_forever():
    """A Loop of 2^62 iterations around an identity body: runs for ever once started."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["x_in"], ["x_out"])],
        "body", [_value("i", TensorProto.INT64, []), _value("cond_in", TensorProto.BOOL, []),
                 _value("x_in", TensorProto.FLOAT, None)],
        [_value("cond_out", TensorProto.BOOL, []), _value("x_out", TensorProto.FLOAT, None)])
    nodes, inits = _pool(src="looped")
    nodes.insert(0, helper.make_node("Loop", ["trips", "yes", "fused"], ["looped"], body=body))
    return projector(nodes, inits + [_const("trips", np.array(2**62, np.int64)), _const("yes", np.array(True))])


SLOW_WIDTH = 65536


def _matmul_pairs(pairs):
    """``pairs`` x two MatMuls through SLOW_WIDTH wide, the wide weights tiled at run time from 64 x 4096
    so the file stays small: each node is short, so a stop lands between nodes within a fraction of a second."""
    nodes, inits = _pool(out="x0")
    rng = np.random.default_rng(0)
    reps = SLOW_WIDTH // 4096
    inits += [_const("up_block", (rng.standard_normal((WIDTH, 4096)) * 0.01).astype(np.float32)),
              _const("down_block", (rng.standard_normal((4096, WIDTH)) * 0.01).astype(np.float32)),
              _const("up_reps", np.array([1, reps], np.int64)), _const("down_reps", np.array([reps, 1], np.int64)),
              _const("zero", np.array(0.0, np.float32))]
    # + 0 x mean(input): weights made at run time, so ORT neither folds nor prepacks them per node at load
    nodes += [helper.make_node("ReduceMean", ["fused"], ["mean"], keepdims=0),
              helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
              helper.make_node("Tile", ["up_block", "up_reps"], ["up_tiled"]),
              helper.make_node("Add", ["up_tiled", "nothing"], ["up"]),
              helper.make_node("Tile", ["down_block", "down_reps"], ["down_tiled"]),
              helper.make_node("Add", ["down_tiled", "nothing"], ["down"])]
    for i in range(pairs):
        out = "embeddings" if i == pairs - 1 else f"x{i + 1}"
        nodes += [helper.make_node("MatMul", [f"x{i}", "up"], [f"h{i}"]),
                  helper.make_node("MatMul", [f"h{i}", "down"], [out])]
    return projector(nodes, inits)


@functools.cache
def _seconds_per_pair() -> float:
    """One pair's time on this machine, timed in ONNX Runtime: CPUs here differ by 40x (a 2-core AVX-512
    machine runs 400 pairs through 4096 wide in 0.8 s, where an older one took a minute)."""
    import onnxruntime as ort

    session = ort.InferenceSession(_matmul_pairs(8).SerializeToString())
    feed = {"fused": np.ones((1, IN_TOKENS, WIDTH), np.float32)}
    session.run(None, feed)
    t0 = time.perf_counter()
    session.run(None, feed)
    return (time.perf_counter() - t0) / 8


def slow(seconds=40.0):
    """A projector that takes about ``seconds`` on this machine (at least 100 pairs, at most 4000)."""
    return _matmul_pairs(int(min(4000, max(100, seconds / _seconds_per_pair()))))


def tokens(n):
    """Returns ``n`` tokens per window (0: a Slice to nothing; more: the pooled tokens tiled), counts made
    from the batch size at run time, so that ONNX Runtime cannot see them when the graph loads."""
    nodes, inits = _pool(out="pooled")
    nodes += [helper.make_node("Shape", ["fused"], ["shape"]),
              helper.make_node("Slice", ["shape", "zero", "one"], ["batch"])]
    inits += [_const("zero", np.array([0], np.int64)), _const("one", np.array([1], np.int64))]
    if n == 0:
        nodes += [helper.make_node("Sub", ["batch", "batch"], ["end"]),
                  helper.make_node("Slice", ["pooled", "zero", "end", "one"], ["embeddings"])]
    else:
        nodes += [helper.make_node("Mul", ["batch", "times"], ["scaled"]),
                  helper.make_node("Concat", ["one", "scaled", "one"], ["reps"], axis=0),
                  helper.make_node("Tile", ["pooled", "reps"], ["embeddings"])]
        inits.append(_const("times", np.array([n // TOKENS], np.int64)))
    return projector(nodes, inits, out_shape=("batch", "tokens", WIDTH))


def not_a_number():
    nodes, inits = _pool(out="pooled")
    nodes.append(helper.make_node("Mul", ["pooled", "nan"], ["embeddings"]))
    return projector(nodes, inits + [_const("nan", np.array(np.nan, np.float32))])


def with_projector(tiny_bundle, folder, model):
    """A copy of the tiny bundle whose projector.onnx is ``model``, the manifest's hash and size updated."""
    bundle = folder / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    onnx.save(model, bundle / "projector.onnx")
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["components"]["projector"].update(sha256=sha256_file(bundle / "projector.onnx"),
                                               bytes=(bundle / "projector.onnx").stat().st_size)
    path.write_text(json.dumps(manifest))
    return bundle


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    import soundfile as sf

    path = tmp_path_factory.mktemp("song") / "song.wav"
    sf.write(path, (0.1 * np.sin(np.arange(16000 * 3) / 16000 * 2 * np.pi * 440)).astype(np.float32), 16000)
    return path


def ask(bundle, song, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(["ask", str(bundle), str(song), "-q", "Genre?", "--max-tokens", "2"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("build,message", [
    (renamed, r"field components\.projector\.inputs names \['fused'\]; the graph's inputs are \['fused_renamed'\]"),
    (half_precision, r"field components\.projector\.inputs\[0\]\.dtype is 'float32'; the graph's 'fused' is float16"),
    (flat_input, r"field components\.projector\.inputs\[0\]\.shape is \['batch', 1500, 64\]; the graph's 'fused' "
                 r"has rank 2"),
    (loop_forever, r"components\.projector holds Loop; audio graphs are straight-line"),
    (huge_allocation, r"projector\.onnx \(components\.projector\): ONNX Runtime failed \("),
    (lambda: tokens(0), r"returned embeddings of shape \(1, 0, 64\) for 1 window\(s\); the manifest's "
                        r"audio\.tokens_per_window says \(1, 750, n_embd\)"),
    (lambda: tokens(150_000), r"returned embeddings of shape \(1, 150000, 64\)"),
    (not_a_number, r"returned NaN or infinite embeddings for the window at 0 s"),
])
def test_a_hostile_projector_ends_in_one_line_from_gamma_rt_ask(tiny_bundle, tmp_path, song, capsys, build, message):
    bundle = with_projector(tiny_bundle, tmp_path, build())
    t0 = time.perf_counter()
    code, err = ask(bundle, song, capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("gamma-rt: error: "), err
    assert re.search(message, err), err
    assert time.perf_counter() - t0 < 60


def test_an_allocation_past_the_memory_cap_is_refused_in_one_line(tiny_bundle, tmp_path, song):
    bundle = with_projector(tiny_bundle, tmp_path, huge_allocation((2800, 1, 1)))  # 1.07 GB of float32
    run = subprocess.run([sys.executable, "-m", "gamma_rt.cli", "ask", str(bundle), str(song), "-q", "Genre?",
                          "--max-tokens", "2"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "GAMMA_RT_ORT_MAX_MEMORY": "256M"})
    assert run.returncode == 2, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("gamma-rt: error: ") and "projector.onnx (components.projector): ONNX Runtime failed" in last
    assert "Traceback" not in run.stderr


def test_a_bad_memory_cap_is_one_line(tiny_bundle, tmp_path, song):
    run = subprocess.run([sys.executable, "-m", "gamma_rt.cli", "ask", str(tiny_bundle), str(song), "-q", "Genre?"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "GAMMA_RT_ORT_MAX_MEMORY": "lots"})
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "gamma-rt: error: $GAMMA_RT_ORT_MAX_MEMORY is 'lots'; give bytes with an optional K, M, G or T (8G)")


def test_an_audio_graph_past_the_time_limit_is_stopped_in_one_line(tiny_bundle, tmp_path, song):
    from gamma_rt.runtime.pipeline import Pipeline

    bundle = with_projector(tiny_bundle, tmp_path, slow())
    with Pipeline.open(bundle) as pipe:
        pipe.backend.runs.time_limit_s = 1.0
        t0 = time.perf_counter()
        with pytest.raises(BundleError, match=r"components\.projector\): ONNX Runtime ran past 1 s; stopped"):
            pipe.ask(song, ["Genre?"], max_tokens=2)
        assert time.perf_counter() - t0 < 15


def test_ctrl_c_stops_an_audio_graph_running_on_the_main_thread(tiny_bundle, tmp_path):
    from gamma_rt.runtime.embed import window_feeds
    from gamma_rt.runtime.pipeline import Pipeline
    from gamma_rt.runtime.windows import Window

    bundle = with_projector(tiny_bundle, tmp_path, slow())
    with Pipeline.open(bundle) as pipe:
        window = Window(0, 0.0, 30.0, np.zeros(480000, np.float32), 480000)
        feeds = window_feeds(window, pipe.layout)
        timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        t0 = time.perf_counter()
        try:
            with pytest.raises(KeyboardInterrupt):
                pipe.backend.encode(feeds)
        finally:
            timer.cancel()  # a graph that ends first must fail this test, not interrupt the next one
        assert time.perf_counter() - t0 < 10  # the graph alone takes about 40 s


def test_the_first_ctrl_c_stops_gamma_rt_ask_in_an_audio_graph(tiny_bundle, tmp_path, song):
    bundle = with_projector(tiny_bundle, tmp_path, slow(seconds=80.0))
    run = subprocess.Popen([sys.executable, "-m", "gamma_rt.cli", "ask", str(bundle), str(song), "-q", "Genre?",
                            "-v"], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert "audio backend:" in run.stderr.readline()  # printed once the bundle is open; encoding is next
        time.sleep(2.0)
        run.send_signal(signal.SIGINT)
        t0 = time.perf_counter()
        out, err = run.communicate(timeout=30)
        assert time.perf_counter() - t0 < 15
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 130, err
    assert "gamma-rt: interrupted" in err.splitlines() and "Traceback" not in err, err
