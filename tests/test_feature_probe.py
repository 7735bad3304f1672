"""The feature probe (bench/feature_probe.py): its variants change what they name, and its stages run."""

import json

import numpy as np
import pytest
import torch

from gamma_rt.bench import feature_probe
from gamma_rt.errors import GammaError
from gamma_rt.export.families.gamma.listening import BANKS_END, RAMP


def test_variant_scales_only_its_channels_and_pools_tokens():
    feats = torch.ones(2, 10, 224)
    out = feature_probe._changed(feats, feature_probe.parse_variant("listen=3,banks=0,pool=4"))
    assert out.shape == (2, 3, 224)  # 10 tokens, 4 at a time, the last 2 averaged on their own
    assert torch.all(out[..., :RAMP + 1] == 3) and torch.all(out[..., RAMP + 1:BANKS_END] == 0)
    assert torch.all(out[..., BANKS_END:] == 1)


def test_tokennorm_gives_every_token_one_listening_norm_and_keeps_the_rest():
    feats = torch.randn(2, 7, 224) * torch.rand(2, 7, 1) * 10
    out = feature_probe._changed(feats, feature_probe.parse_variant("tokennorm"))
    assert torch.allclose(out[..., :RAMP].norm(dim=-1), torch.full((2, 7), feature_probe.TOKEN_NORM))
    assert torch.equal(out[..., RAMP:], feats[..., RAMP:])


def test_as224_lays_a_d48_cache_out_as_the_d224_features():
    feats = torch.arange(48.0).expand(2, 5, 48)
    out = feature_probe._changed(feats, feature_probe.parse_variant("as224"))
    assert out.shape == (2, 5, 224)
    assert torch.equal(out[..., :RAMP + 1], feats[..., :RAMP + 1])
    assert torch.all(out[..., RAMP + 1:BANKS_END] == 0)
    assert torch.equal(out[..., BANKS_END:BANKS_END + 15], feats[..., RAMP + 1:])
    assert torch.all(out[..., BANKS_END + 15:] == 0)
    with pytest.raises(GammaError, match="d 48 cache"):
        feature_probe._changed(torch.ones(1, 2, 224), {"as224": True})


def test_meanmix_adds_the_song_mean_of_the_listening_channels_to_every_token():
    feats = torch.randn(2, 5, 224)
    out = feature_probe._changed(feats, feature_probe.parse_variant("meanmix=0.5"))
    assert torch.allclose(out[..., :RAMP], feats[..., :RAMP] + 0.5 * feats[..., :RAMP].mean(dim=1, keepdim=True))
    assert torch.equal(out[..., RAMP:], feats[..., RAMP:])


def test_banktokens_parts_the_banks_and_the_listening_channels_by_token():
    feats = torch.randn(2, 9, 224)
    out = feature_probe._changed(feats, feature_probe.parse_variant("banktokens=3"))
    assert torch.all(out[:, :6, RAMP + 1:BANKS_END] == 0) and torch.all(out[:, 6:, :RAMP + 1] == 0)
    assert torch.equal(out[:, :6, :RAMP + 1], feats[:, :6, :RAMP + 1])
    assert torch.equal(out[:, 6:, RAMP + 1:BANKS_END], feats[:, 6:, RAMP + 1:BANKS_END])
    assert torch.equal(out[..., BANKS_END:], feats[..., BANKS_END:])
    with pytest.raises(GammaError, match="only 9 tokens"):
        feature_probe._changed(feats, {"banktokens": 9})


@pytest.mark.parametrize("text", ["loud=2", "listen=x", "pool=0", "hidden=0", "synth=1", "banks"])
def test_a_bad_variant_is_a_clear_error(text):
    with pytest.raises(GammaError, match="--variant"):
        feature_probe.parse_variant(text)


def test_encode_train_and_linear_run_on_a_small_cache(tmp_path):
    cache, results = tmp_path / "feats.pt", tmp_path / "probe.json"
    assert feature_probe.main(["encode", "--out", str(cache), "--songs", "24", "--held-out", "2",
                               "--rendered", "0", "--json", str(results)]) == 0
    saved = torch.load(cache)
    assert saved["train"].shape[:2] == (24, 125) and saved["eval"].shape[0] == 2  # 15 s at 8.3 tokens/s
    assert feature_probe.main(["train", str(cache), "--variant", "synth,banks=0,hidden=32", "--steps", "2",
                               "--json", str(results)]) == 0
    assert feature_probe.main(["linear", str(cache), "--json", str(results)]) == 0
    runs = json.loads(results.read_text())["runs"]
    assert [r["stage"] for r in runs] == ["encode", "train", "linear"]
    trained = runs[1]
    assert trained["train_songs"] == 24 and trained["held_out"] == 2 and len(trained["key_replies"]) == 2
    assert set(trained["accuracy"]) == {"key", "tempo", "meter", "instruments", "event"}
    assert all(0 <= v <= 1 for v in trained["accuracy"].values())
    assert np.isfinite(trained["final_loss"]) and "--variant synth,banks=0,hidden=32" in trained["command"]
    assert set(runs[2]["accuracy"]) == {"key_from_listening_channels", "tempo_from_bank_magnitudes",
                                        "meter_from_bank_magnitudes"}


def test_a_missing_cache_is_a_clear_error(tmp_path, capsys):
    assert feature_probe.main(["linear", str(tmp_path / "none.pt")]) != 0
    assert "no feature cache" in capsys.readouterr().err
