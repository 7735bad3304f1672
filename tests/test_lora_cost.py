"""bench/lora_cost.py: the merged decoder and base + run-time adapter, timed in one run, on a tiny OpenMU."""

from __future__ import annotations

import json

from openmu_fixtures import *  # noqa: F401,F403
from gamma_rt.bench import lora_cost


def test_lora_cost_writes_both_rates_their_ratio_and_that_they_decode_alike(tmp_path, capsys, openmu_bundle):
    code = lora_cost.main(["--bundle", str(openmu_bundle), "--tokens", "6", "--repeats", "2", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    (path,) = tmp_path.glob("lora-cost-bundle-*.json")
    result = json.loads(path.read_text())
    rates = result["decode_tok_s"]
    assert rates["merged"]["n"] == rates["base+lora"]["n"] == 2
    assert result["ratio_lora_over_merged"] == rates["base+lora"]["median"] / rates["merged"]["median"] > 0
    assert result["same_tokens"] is True
    assert result["adapter"]["rank"] == 16 and result["command"].startswith("python -m gamma_rt.bench.lora_cost")


def test_lora_cost_on_a_bundle_without_an_adapter_is_one_line(tmp_path, capsys, openmu_onnx_bundle):
    code = lora_cost.main(["--bundle", str(openmu_onnx_bundle), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "no component 'lora'" in err
