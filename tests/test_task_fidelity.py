"""bench/task_fidelity.py on the shipped checkpoint, for real: one run exports ONNX fp32/fp16 and GGUF F32/F16,
quantizes Q8_0, Q6_K, Q4_K_M and Q4_0 with llama.cpp, asks one held-out song through PyTorch and through every
path, and writes the table; the tests read that one run."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

from gamma_rt.bench.task_fidelity import PATHS, main  # noqa: E402
from gamma_rt.cli import main as gamma_rt  # noqa: E402
from gamma_rt.synthetic_tasks import ATTRIBUTES  # noqa: E402

BUILTIN = Path(__file__).resolve().parents[1] / "gamma_rt" / "builtin"
SONGS = 1


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fidelity")
    out = folder / "task_fidelity.json"
    printed = io.StringIO()
    with redirect_stdout(printed):
        rc = main([str(BUILTIN), "--songs", str(SONGS), "--threads", "2", "--work", str(folder / "work"),
                   "--out", str(out)])
    assert rc == 0
    return json.loads(out.read_text()), printed.getvalue(), folder / "work"


def rows_by_path(result: dict) -> dict[str, dict]:
    return {row["path"]: row for row in result["rows"]}


def test_the_table_has_pytorch_and_every_path_with_accuracies_and_sizes(measured):
    result, _, _ = measured
    rows = rows_by_path(result)
    assert list(rows) == ["pytorch", *(p.name for p in PATHS)]
    for row in rows.values():
        assert set(row["accuracy"]) == set(ATTRIBUTES)
        assert all(0.0 <= v <= 1.0 for v in row["accuracy"].values()), row
        assert row["bytes"] == sum(row["files"].values()) and all(b > 0 for b in row["files"].values())
    assert rows["pytorch"]["files"] == {"model.safetensors": (BUILTIN / "model.safetensors").stat().st_size}
    assert result["inputs"]["songs"] == SONGS and result["machine"]["versions"]["llama-cpp-python"]


def test_points_are_each_paths_accuracy_minus_pytorchs_times_100(measured):
    result, _, _ = measured
    reference = rows_by_path(result)["pytorch"]["accuracy"]
    for row in result["rows"][1:]:
        points = row["points_vs_pytorch"]
        assert points == {a: round(100 * (row["accuracy"][a] - reference[a]), 2) for a in ATTRIBUTES}
        assert row["worst_points"] == min(points.values())
        assert row["within_1_point"] == all(abs(p) <= 1.0 for p in points.values())
        assert 0.0 <= row["same_replies_as_pytorch"] <= 1.0
    summary = result["summary"]
    assert summary["target_met"] == all(r["within_1_point"] for r in result["rows"][1:] if r["held_to_target"])
    assert summary["q4_k_m_worst_points"] == rows_by_path(result)["gguf-q4_k_m"]["worst_points"]
    assert summary["resolution_points"] == 100 / SONGS


def test_each_path_runs_its_own_audio_graphs_and_decoder(measured):
    result, _, work = measured
    manifest = json.loads((work / "bundle" / "manifest.json").read_text())["components"]
    rows = rows_by_path(result)
    for path in PATHS:
        row = rows[path.name]
        assert row["ran"]["precision"] == path.precision
        assert row["ran"]["decoder_file"] == manifest[path.decoder]["file"]
        assert manifest[path.decoder]["file"] in row["files"]
    assert all(f.endswith(".fp16.onnx") for f in rows["onnx-fp16"]["files"] if f.endswith(".onnx"))
    assert not any(f.endswith(".fp16.onnx") for f in rows["gguf-q4_0"]["files"])
    assert rows["gguf-q4_0"]["bytes"] < rows["gguf-f16"]["bytes"] < rows["gguf-f32"]["bytes"]
    assert rows["gguf-f32"]["run_shared_with"] == rows["cache-off"]["run_shared_with"] == "onnx-fp32"


def test_cache_on_reads_every_window_from_the_cache_on_its_second_pass(measured):
    result, _, _ = measured
    row = rows_by_path(result)["cache-on"]
    assert row["first_pass"]["encoded_windows"] == SONGS and row["first_pass"]["cached_windows"] == 0
    assert row["ran"]["cached_windows"] == SONGS and row["ran"]["encoded_windows"] == 0
    assert row["same_replies_as_first_pass"] and row["same_replies_as_cache_off"]
    assert row["cache_bytes"] > 0
    assert "cached_windows" not in rows_by_path(result)["cache-off"]["ran"]


def test_each_gguf_records_the_tensor_types_it_really_holds(measured):
    result, _, _ = measured
    files = result["gguf_files"]
    assert set(files["decoder-f32.gguf"]["counts"]) == {"F32"}
    assert "F16" in files["decoder-f16.gguf"]["counts"] and "Q8_0" in files["decoder-q8_0.gguf"]["counts"]
    n_tensors = sum(files["decoder-f32.gguf"]["counts"].values())
    for record in files.values():
        assert sum(record["counts"].values()) == len(record["by_tensor"]) == n_tensors
    # hidden 96 is no multiple of 256: llama.cpp quantizes the 96-wide rows of "Q4_K_M" as Q5_0 instead
    q4_k_m = files["decoder-q4_k_m.gguf"]
    assert q4_k_m["by_tensor"]["blk.0.attn_q.weight"] == "Q5_0"
    assert rows_by_path(result)["gguf-q4_k_m"]["decoder_tensor_types"] == q4_k_m["counts"]


def test_the_printed_markdown_table_has_a_line_per_path(measured):
    _, printed, _ = measured
    lines = [line for line in printed.splitlines() if line.startswith("| ")]
    assert len(lines) == 2 + len(PATHS)  # header and the PyTorch row
    for path in PATHS:
        assert any(line.startswith(f"| {path.name} ") for line in lines), path.name
    assert "Q4_K_M: " in printed and "Q5_0" in printed


def test_help_shows_an_example(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "python -m gamma_rt.bench.task_fidelity gamma_rt/builtin --songs" in capsys.readouterr().out


def test_a_folder_that_is_no_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    assert main([str(tmp_path), "--songs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"task_fidelity: error: {tmp_path}: not a checkpoint folder (no config.json)"


def test_a_work_folder_that_is_not_empty_is_refused(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main([str(BUILTIN), "--songs", "1", "--work", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "keep.txt").read_text() == "mine"


def test_bench_fidelity_refuses_a_precision_it_would_ignore(capsys):
    assert gamma_rt(["bench", "fidelity", str(BUILTIN), "--songs", "1", "--precision", "fp16"]) == 2
    assert "--precision: bench fidelity runs every audio precision" in capsys.readouterr().err
    assert gamma_rt(["bench", "fidelity", str(BUILTIN)]) == 2
    assert "needs --songs N" in capsys.readouterr().err
