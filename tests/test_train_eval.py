"""``gamma-rt train`` and ``gamma-rt eval``: a few training steps lower the loss and write an ordinary
checkpoint; it exports as it is, and eval asks its bundle (and the checkpoint) every scored question."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("llama_cpp")

from gamma_rt.cli import main  # noqa: E402
from gamma_rt.export.gguf_export import export_gguf  # noqa: E402
from gamma_rt.export.onnx_export import export_onnx  # noqa: E402
from gamma_rt.export.families.gamma.train import train  # noqa: E402
from gamma_rt.synthetic_tasks import ATTRIBUTES  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "ckpt"
    record = train(out, clips=4, steps=3, batch=4, seed=1, say=lambda text: None)
    return out, record


def test_three_steps_lower_the_loss_and_write_a_checkpoint_folder(trained):
    out, record = trained
    assert record["steps_done"] == 3 and record["losses"][-1] < record["losses"][0]
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "train_record.json"} <= names
    assert json.loads((out / "train_record.json").read_text())["steps_done"] == 3


def test_training_is_reproducible_from_its_seed(trained, tmp_path):
    out, record = trained
    again = train(tmp_path / "again", clips=4, steps=3, batch=4, seed=1, say=lambda text: None)
    assert again["losses"] == record["losses"]
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_the_checkpoint_exports_and_eval_prints_every_attribute(trained, tmp_path, capsys):
    out, _ = trained
    bundle = tmp_path / "bundle"
    export_onnx(out, bundle, precision="fp32")
    export_gguf(out, bundle, "f32")
    assert main(["eval", str(bundle), "--synthetic", "1", "--threads", "1", "--checkpoint", str(out)]) == 0
    table = capsys.readouterr().out
    for attribute in ATTRIBUTES:
        assert attribute in table
    assert "pytorch" in table and "chance" in table
    assert main(["eval", str(bundle), "--synthetic", "1", "--threads", "1", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert set(record["accuracy"]) == set(ATTRIBUTES) and record["songs"] == 1
    assert all(0.0 <= v <= 1.0 for v in record["accuracy"].values())
