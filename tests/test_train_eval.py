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


@pytest.mark.parametrize("bpm", [72, 100, 150])
def test_the_temporal_experts_rhythm_bank_peaks_at_the_beat(bpm):
    import numpy as np
    import torch

    from gamma_rt.export.families.gamma import listening
    from gamma_rt.export.families.gamma import train as recipe
    from gamma_rt.export.families.gamma.model import GammaModel
    from gamma_rt.synth import Song

    cfg = recipe.synthetic_config(rhythm=True)
    torch.manual_seed(0)
    model = GammaModel(cfg)
    listening.listen_init(model, cfg, rhythm=True)
    song = Song(bpm=bpm, instruments=("piano", "drums"), event_instrument="drums", event_second=2)
    heard = {}
    attention = model.temporal_encoder.layers[0].self_attn
    def listen(module, args, out):
        heard["out"] = out[0][0, 0]

    hook = attention.register_forward_hook(listen)
    with torch.no_grad():
        model.temporal_encoder(torch.from_numpy(recipe.clip_mels([song], cfg)))
    hook.remove()
    freqs, channels = listening.bank_channels()["beat"]
    out = heard["out"].numpy()
    power = np.hypot(out[channels[0::2]], out[channels[1::2]])
    at_beat = power[np.abs(np.log(freqs * 60 / bpm)).argmin()]
    # A peak at the beat: near the bank's top (its harmonics, eighths and bars, peak too; the decoder learns
    # to tell them apart), well above the bank's median.
    assert at_beat >= 0.5 * power.max() and at_beat >= 2.0 * np.median(power), (at_beat, power.max(), np.median(power))


def test_the_rhythm_experts_own_disjoint_channels_and_the_listening_path_is_the_d48_one():
    """With ``rhythm`` the temporal expert is the two rhythm banks alone and the global expert the listening
    channels alone: each writes exact zeros in the other's channels, so the router keeps them apart,
    the listening channels reach the projector as the d 48 experts deliver them (the shared layer norm of the
    first design lost key, FINDINGS.md), the beat bank peaks at the song's beat, and the tokens resolve beats."""
    import numpy as np
    import torch

    from gamma_rt.export.families.gamma import listening
    from gamma_rt.export.families.gamma import train as recipe
    from gamma_rt.export.families.gamma.model import GammaModel
    from gamma_rt.synth import Song

    fused = {}
    for rhythm in (False, True):
        cfg = recipe.synthetic_config(rhythm=rhythm)
        torch.manual_seed(0)
        model = GammaModel(cfg)
        listening.listen_init(model, cfg, rhythm=rhythm)
        mel = torch.from_numpy(recipe.clip_mels([Song(bpm=120)], cfg))
        with torch.no_grad():
            temporal = model.temporal_encoder(mel).last_hidden_state
            global_ = model.global_encoder(mel).last_hidden_state
            fused[rhythm] = model.fusion(temporal, global_)[0].numpy()
    assert cfg.tokens_per_window / cfg.audio.window_seconds > 6.0  # Nyquist above 180 BPM (3 Hz)
    temporal, global_ = temporal[0].numpy(), global_[0].numpy()
    banks = listening.bank_channels()
    bank = np.concatenate([c for _, c in banks.values()])
    assert not set(banks["beat"][1]) & set(banks["bar"][1])
    assert not set(bank) & set(listening.listening_channels(cfg.temporal.d_model))
    assert np.all(temporal[:, listening.listening_channels(cfg.temporal.d_model)] == 0.0)
    assert np.all(global_[:, bank] == 0.0)
    assert np.abs(temporal[:, bank]).mean() > 0.1 and np.abs(global_[:, :listening.RAMP]).mean() > 0.1
    # The router hands the window's first BANK_TOKENS tokens to the banks alone, the rest to listening alone.
    frames = listening.BANK_TOKENS * cfg.projector.pool_stride
    assert frames > 0 and np.abs(fused[True][:frames, bank]).mean() > 0.1
    assert np.abs(fused[True][frames:, bank]).max() < 1e-4
    d48, d224 = fused[False][frames:, :listening.RAMP], fused[True][frames:, :listening.RAMP]
    assert np.corrcoef(d48.ravel(), d224.ravel())[0, 1] > 0.85
    assert 0.8 < d224.std() / d48.std() < 1.25
    freqs, channels = banks["beat"]
    magnitude = np.hypot(temporal[:, channels[0::2]], temporal[:, channels[1::2]]).mean(0)
    assert abs(freqs[magnitude.argmax()] - 2.0) < 0.04 * 2.0  # 120 BPM


@pytest.mark.parametrize("level", [0.3, 1.0, 3.0])
def test_the_router_gives_the_first_tokens_to_the_banks_whatever_the_songs_level(level):
    """route_bank_tokens: the gate reads the rhythm expert's step through its final norm, so the split falls on
    the same frame for a quiet or a loud song, with weights within 1e-4 of 0 or 1."""
    import torch

    from gamma_rt.export.families.gamma import listening
    from gamma_rt.export.families.gamma import train as recipe
    from gamma_rt.export.families.gamma.model import GammaModel
    from gamma_rt.synth import Song

    cfg = recipe.synthetic_config(rhythm=True)
    torch.manual_seed(0)
    model = GammaModel(cfg)
    listening.listen_init(model, cfg, rhythm=True)
    mel = torch.from_numpy(recipe.clip_mels([Song(bpm=90, seed=3)], cfg)) * level
    seen = {}
    model.fusion.router.register_forward_hook(
        lambda mod, args, out: seen.update(w=torch.softmax(mod.gate(torch.cat(args, -1)), -1)[0, :, 0]))
    with torch.no_grad():
        recipe.pooled_features(model, mel)
    frames = listening.BANK_TOKENS * cfg.projector.pool_stride
    assert seen["w"][:frames].min() > 1 - 1e-4 and seen["w"][frames:].max() < 1e-4


def test_the_projectors_rectifier_rows_read_a_magnitude_whatever_the_phase():
    import numpy as np
    import torch

    from gamma_rt.export.families.gamma import listening
    from gamma_rt.export.families.gamma import train as recipe
    from gamma_rt.export.families.gamma.model import GammaModel

    cfg = recipe.synthetic_config(rhythm=True)
    model = GammaModel(cfg)
    listening.listen_init(model, cfg, rhythm=True)
    cos_ch, sin_ch = listening.bank_channels()["beat"][1][:2]
    rows = slice(0, listening.RECTIFIER_DIRECTIONS)  # the first frequency's rectifiers
    sums = {}
    for magnitude in (1.0, 2.0):
        for phase in np.linspace(0, 2 * np.pi, 13):
            x = torch.zeros(cfg.temporal.d_model)
            x[cos_ch], x[sin_ch] = magnitude * np.cos(phase), magnitude * np.sin(phase)
            hidden = torch.nn.functional.gelu(model.projector.linear_1(x))[rows]
            sums.setdefault(magnitude, []).append(float(hidden.sum().detach()))
    for values in sums.values():
        assert max(values) / min(values) < 1.2
    assert min(sums[2.0]) > 1.7 * max(sums[1.0])


def test_rendered_songs_take_their_share_of_training_and_keep_their_labels():
    import numpy as np

    from gamma_rt.export.families.gamma import train as recipe
    from gamma_rt.render import available
    from gamma_rt.synthetic_tasks import train_song

    assert sum(recipe.is_rendered(i, 0.5) for i in range(100)) == 50
    assert sum(recipe.is_rendered(i, 0.25) for i in range(100)) == 25
    assert not any(recipe.is_rendered(i, 0.0) for i in range(10)) and all(recipe.is_rendered(i, 1.0) for i in range(10))
    if available() is not None:
        pytest.skip(f"FluidSynth rendering: {available()}")
    cfg = recipe.synthetic_config()
    songs = [train_song(i, 3) for i in range(4)]
    batches = list(recipe.training_mels(songs, cfg, rendered=0.5, batch=3))
    assert [start for start, _ in batches] == [0, 3]
    mels = np.concatenate([m for _, m in batches])
    assert mels.shape == (4, cfg.audio.n_mels, 3000)
    synth = recipe.clip_mels(songs, cfg)
    for i in range(4):  # the synth's clips are the synth's; the rendered ones differ, and are not silence
        same = np.allclose(mels[i], synth[i])
        assert same != recipe.is_rendered(i, 0.5)
        assert mels[i, :, :1500].std() > 0.05


def test_a_rendered_share_out_of_range_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "x"), "--rendered", "1.5"]) != 0
    assert "--rendered 1.5" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_auxiliary_heads_train_but_leave_the_checkpoint_shape_alone(trained, tmp_path):
    from safetensors import safe_open

    out, _ = trained
    record = train(tmp_path / "aux", clips=4, steps=3, batch=4, seed=1, aux=0.5, say=lambda text: None)
    assert record["aux"] == 0.5 and record["steps_done"] == 3 and record["losses"][-1] < record["losses"][0]
    shapes = []
    for folder in (out, tmp_path / "aux"):
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            shapes.append({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    assert shapes[0] == shapes[1]


def test_a_negative_aux_weight_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "x"), "--aux", "-1"]) != 0
    assert "--aux -1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_rhythm_checkpoint_exports_and_its_graphs_match_pytorch(tmp_path):
    import numpy as np
    import onnxruntime as ort
    import torch

    from gamma_rt.export.families.gamma.checkpoint import Checkpoint
    from gamma_rt.export.families.gamma.train import clip_mels
    from gamma_rt.manifest import Manifest
    from gamma_rt.synthetic_tasks import eval_song

    out = tmp_path / "rhythm"
    record = train(out, clips=2, steps=1, batch=2, seed=2, rhythm=True, say=lambda text: None)
    assert record["rhythm"] is True
    bundle = tmp_path / "bundle"
    export_onnx(out, bundle, precision="fp32")
    export_gguf(out, bundle, "f32")
    ckpt = Checkpoint(out)
    mel = clip_mels([eval_song(0)], ckpt.config)
    manifest = Manifest.read(bundle)
    run = lambda key, feeds: ort.InferenceSession(str(bundle / manifest.component(key).file)).run(None, feeds)[0]  # noqa: E731
    fused = run("fusion", {"temporal": run("temporal_encoder", {"mel": mel}), "global": run("global_encoder", {"mel": mel})})
    embeddings = run("projector", {"fused": fused})
    with torch.no_grad():
        ref = ckpt.model().encode_window(torch.from_numpy(mel)).numpy()
    assert np.linalg.norm(embeddings - ref) / np.linalg.norm(ref) <= 1e-4
    assert any(p.suffix == ".gguf" for p in bundle.iterdir())


def test_end_to_end_training_moves_the_experts_and_the_fusion(trained, tmp_path):
    """--end-to-end: the same seed and init as the frozen run, but the experts and the fusion learn too; the
    checkpoint keeps the family's shape and exports."""
    import torch
    from safetensors.torch import load_file

    frozen, _ = trained
    out = tmp_path / "e2e"
    record = train(out, clips=4, steps=3, batch=4, seed=1, end_to_end=True, say=lambda text: None)
    assert record["end_to_end"] is True and record["steps_done"] == 3
    assert record["losses"][-1] < record["losses"][0]
    before, after = load_file(frozen / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(before) == set(after) and all(before[k].shape == after[k].shape for k in before)
    moved = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert {"temporal_encoder", "global_encoder", "fusion", "projector", "llm"} <= moved, moved
    export_onnx(out, tmp_path / "bundle", precision="fp32")
    assert (tmp_path / "bundle" / "manifest.json").is_file()


def test_the_training_record_names_the_command_that_repeats_it(tmp_path, capsys):
    import shlex

    out = tmp_path / "ck"
    assert main(["train", "--out", str(out), "--clips", "2", "--steps", "1", "--batch", "2", "--seed", "4",
                 "--no-rhythm", "--rendered", "0", "--threads", "1"]) == 0
    capsys.readouterr()
    command = json.loads((out / "train_record.json").read_text())["command"]
    again = tmp_path / "again"
    words = shlex.split(command)
    assert words[:2] == ["gamma-rt", "train"] and "--no-rhythm" in words and words[words.index("--rendered") + 1] == "0.0"
    words[words.index("--out") + 1] = str(again)
    assert main(words[1:]) == 0
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
