"""OpenMU's decoder and its LoRA adapter: Llama 3 in GGUF, the adapter merged at export or applied by
llama.cpp at run time, each answering token for token as transformers' Llama with PEFT's adapter does.

Oracle: LlamaForCausalLM from the base folder + PeftModel.from_pretrained(...).merge_and_unload() (what
OpenMU's loader runs), fed the reference audio embeddings in place of <image>; 24 greedy tokens.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from openmu_fixtures import *  # noqa: F401,F403
from openmu_fixtures import openmu_family
from gamma_rt.cli import main
from gamma_rt.errors import BundleError
from gamma_rt.runtime import Pipeline, Sampling
from gamma_rt.synth import Music, synthesize

QUESTION = "What genre is this song?"
TOKENS = 24
RATE = 16000


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """(path, samples) of a 12 s WAV."""
    audio = synthesize(Music(12.0, RATE, 1))[:, 0]
    path = tmp_path_factory.mktemp("openmu_clip") / "clip.wav"
    sf.write(path, audio, RATE, subtype="FLOAT")
    return path, audio


@pytest.fixture(scope="module")
def reference(openmu_folder, clip):
    """{True: PEFT-merged answer, False: the base's answer}, from transformers."""
    from transformers import ASTFeatureExtractor, AutoTokenizer

    from gamma_rt.export.families.openmu.reference import audio_reference, greedy_answer, llm_reference

    family = openmu_family(openmu_folder)
    fe = ASTFeatureExtractor(num_mel_bins=128, max_length=3072)
    mel = torch.from_numpy(fe(clip[1], sampling_rate=RATE, return_tensors="np").input_values.transpose(0, 2, 1))
    embeddings = audio_reference(family)(mel)
    tokenizer = AutoTokenizer.from_pretrained(family.base)
    return {adapter: greedy_answer(llm_reference(family, adapter), tokenizer, embeddings, QUESTION, TOKENS)
            for adapter in (True, False)}


def _answer(bundle, clip, **options) -> list[int]:
    with Pipeline.open(bundle, threads=1, **options) as pipe:
        return pipe.ask(clip[0], QUESTION, Sampling(), TOKENS)[0].tokens


def test_the_merged_gguf_answers_as_peft_does(openmu_bundle, clip, reference):
    assert _answer(openmu_bundle, clip) == reference[True]  # auto picks 'decoder', the adapter merged


def test_the_base_with_the_adapter_at_run_time_answers_as_peft_and_the_merged_gguf(openmu_bundle, clip, reference):
    runtime = _answer(openmu_bundle, clip, lora="lora")
    assert runtime == reference[True] == _answer(openmu_bundle, clip, decoder="decoder")


def test_without_the_adapter_the_answer_differs(openmu_bundle, clip, reference):
    base = _answer(openmu_bundle, clip, decoder="decoder.base")
    assert base == reference[False]
    assert base != reference[True]


def test_the_prompt_is_llavas_token_for_token(openmu_bundle, openmu_folder):
    """BOS + system + ' USER: ', the audio, then '\\n{question} ASSISTANT:', each side tokenized apart."""
    from transformers import AutoTokenizer

    from gamma_rt.export.families.openmu.prompt import SYSTEM

    tokenizer = AutoTokenizer.from_pretrained(openmu_family(openmu_folder).base)
    before = tokenizer(SYSTEM + " USER: ").input_ids  # LLaVA's tokenizer_image_token: BOS on the first chunk
    after = tokenizer("\n" + QUESTION + " ASSISTANT:").input_ids[1:]
    assert before[0] == tokenizer.bos_token_id
    with Pipeline.open(openmu_bundle, threads=1) as pipe:
        assert pipe.tokens(pipe.prompt.head()) == before
        assert pipe.tokens(pipe.prompt.tail(QUESTION)) == after


def test_a_follow_up_turn_ends_the_answer_with_sep2(openmu_bundle):
    with Pipeline.open(openmu_bundle, threads=1) as pipe:
        assert pipe.prompt.follow_up("And the key?") == "<|reserved_special_token_250|>USER: And the key? ASSISTANT:"


def test_the_adapter_on_a_decoder_it_is_merged_into_is_refused_in_one_line(openmu_bundle):
    with pytest.raises(BundleError, match="has lora merged in already") as err:
        Pipeline.open(openmu_bundle, threads=1, lora="lora", decoder="decoder")
    assert "\n" not in str(err.value)


def test_an_adapter_of_another_base_is_refused_in_one_line(tmp_path, tmp_path_factory, openmu_bundle):
    """Another OpenMU (seed 1) has its own base: its adapter is refused on this bundle's decoder.base."""
    from gamma_rt.export.families import family_named
    from gamma_rt.export.gguf_export import export_gguf

    other = tmp_path / "other"
    family_named("openmu").init("tiny", other, seed=1)
    other_bundle = tmp_path / "other_bundle"
    export_gguf(other, other_bundle, "f32", progress=lambda items, **_: items)
    bundle = tmp_path / "bundle"
    shutil.copytree(openmu_bundle, bundle)
    shutil.copy(other_bundle / "lora.gguf", bundle / "lora-other.gguf")
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = json.loads((other_bundle / "manifest.json").read_text())["components"]["lora"]
    manifest["components"]["lora.other"] = {**entry, "file": "lora-other.gguf"}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="--lora lora.other was made for base") as err:
        Pipeline.open(bundle, threads=1, lora="lora.other", decoder="decoder.base")
    assert "\n" not in str(err.value)


def test_our_merge_equals_peft_merge_and_unload(openmu_folder):
    from safetensors import safe_open

    from gamma_rt.export.families.openmu.reference import llm_reference

    family = openmu_family(openmu_folder)
    merged = llm_reference(family, adapter=True).state_dict()
    key = "model.layers.1.self_attn.q_proj.weight"
    with safe_open(family.base / "model.safetensors", "pt") as sf_:
        ours = family.lora.merge(key, sf_.get_tensor(key).float().numpy())
    np.testing.assert_allclose(ours, merged[key].numpy(), rtol=0, atol=1e-6)
    assert len(family.lora.pairs) == 7 * 2  # every Linear of both layers, lm_head excepted


def test_ask_takes_lora_on_the_command_line(capsys, openmu_bundle, clip):
    with Pipeline.open(openmu_bundle, threads=1, decoder="decoder") as pipe:
        merged = pipe.ask(clip[0], QUESTION, Sampling(), TOKENS)[0].text
    code = main(["ask", str(openmu_bundle), str(clip[0]), "-q", QUESTION, "--lora", "lora", "--threads", "1",
                 "--max-tokens", str(TOKENS), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["answers"][0]["answer"] == merged


def test_ask_refuses_a_component_that_is_not_an_adapter_in_one_line(capsys, openmu_bundle, clip):
    code = main(["ask", str(openmu_bundle), str(clip[0]), "-q", QUESTION, "--lora", "decoder"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "not gguf_lora" in err


def test_serve_with_lora_answers_as_the_merged_decoder(openmu_bundle, clip):
    """serve --lora: the server's one context has the adapter; the official openai client gets the answer
    the merged decoder gives."""
    pytest.importorskip("fastapi", reason="gamma-rt serve needs the serve extra")
    import openai

    from gamma_rt.runtime.options import RuntimeOptions
    from gamma_rt.runtime.serve.service import ServeOptions, Service
    from test_serve import ServerThread, audio_part

    with Pipeline.open(openmu_bundle, threads=1, decoder="decoder") as pipe:
        merged = pipe.ask(clip[0], QUESTION, Sampling(), TOKENS)[0].text
    options = ServeOptions(parallel=1, max_queue=1, max_tokens=256, max_audio_seconds=60, model_name="openmu")
    server = ServerThread(Service.open(openmu_bundle, RuntimeOptions(threads=1, lora="lora"), options))
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=60)
        messages = [{"role": "user", "content": [audio_part(clip[0]), {"type": "text", "text": QUESTION}]}]
        reply = client.chat.completions.create(model="openmu", messages=messages, max_tokens=TOKENS, temperature=0)
    finally:
        server.stop()
    assert server.service.pipeline.options.decoder == "decoder.base"
    assert merged and reply.choices[0].message.content == merged


def test_the_base_quantizes_apart_and_keeps_taking_the_adapter(openmu_bundle, clip, tmp_path):
    from gamma_rt.manifest import Manifest
    from gamma_rt.quant.gguf_quant import quantize

    bundle = tmp_path / "bundle"
    shutil.copytree(openmu_bundle, bundle)
    quantize(bundle, "Q8_0")  # the default source: the decoder with the adapter merged, never its base
    quantize(bundle, "Q8_0", source_name="decoder.base")
    m = Manifest.load(bundle)
    merged, base = m.component("decoder.q8_0"), m.component("decoder.base.q8_0")
    assert merged.extra["lora_merged"] == "lora" and merged.extra["quantized_from"] == "decoder-f32.gguf"
    assert base.extra["base_id"] == m.component("lora").extra["base_id"] and "lora_merged" not in base.extra
    assert base.extra["quantized_from"] == "decoder-base-f32.gguf"
    assert len(_answer(bundle, clip, lora="lora", decoder="decoder.base.q8_0")) == TOKENS
    with pytest.raises(BundleError, match="has lora merged in already"):
        Pipeline.open(bundle, threads=1, lora="lora", decoder="decoder.q8_0")
    with pytest.raises(BundleError, match=r"--source 'lora' is not an F32/F16/BF16 decoder"):
        quantize(bundle, "Q8_0", source_name="lora")
