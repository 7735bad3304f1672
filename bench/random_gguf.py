"""A Qwen3-shaped GGUF with random weights, for decode-speed measurements without any downloaded model.

llama.cpp's decode speed depends on the tensor shapes and types, not on the values, so a random model of
the Qwen3-8B shape reads exactly the bytes per token the real one would. Written with the ``gguf``
package directly (no torch), so it also runs on a GPU box that has only numpy.

    python -m gamma_rt.bench.random_gguf OUT.gguf --preset full     # 16.4 GB F16, Qwen3-8B shape
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from gamma_rt.decoder_shape import PRESETS, DecoderShape

# Random values are drawn once and tiled: 8 G random draws would take minutes and change nothing.
_POOL_SIZE = 1 << 24


def tensor_shapes(shape: DecoderShape) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name -> numpy shape (rows = output features, as in the HF weight) of a Qwen3 decoder; the
    output head is written even when tied, as a separate matrix."""
    d, q, kv, ff = (
        shape.hidden_size,
        shape.num_attention_heads * shape.head_dim,
        shape.num_key_value_heads * shape.head_dim,
        shape.intermediate_size,
    )
    shapes = {"token_embd.weight": (shape.vocab_size, d), "output_norm.weight": (d,),
              "output.weight": (shape.vocab_size, d)}
    for i in range(shape.num_hidden_layers):
        b = f"blk.{i}."
        shapes.update({
            b + "attn_norm.weight": (d,),
            b + "attn_q.weight": (q, d),
            b + "attn_k.weight": (kv, d),
            b + "attn_v.weight": (kv, d),
            b + "attn_output.weight": (d, q),
            b + "attn_q_norm.weight": (shape.head_dim,),
            b + "attn_k_norm.weight": (shape.head_dim,),
            b + "ffn_norm.weight": (d,),
            b + "ffn_gate.weight": (ff, d),
            b + "ffn_up.weight": (ff, d),
            b + "ffn_down.weight": (d, ff),
        })
    return shapes


def _vocab(n: int) -> tuple[list[str], list[float], list[int]]:
    """An SPM-style vocab: <unk>, <s>, </s>, the 256 byte tokens llama.cpp looks up, then filler pieces."""
    import gguf

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    tokens += [f"\u2581t{i}" for i in range(n - len(tokens))]
    types += [gguf.TokenType.NORMAL] * (n - len(types))
    return tokens[:n], [0.0] * n, [int(t) for t in types[:n]]


def write_random_qwen3_gguf(path: str | Path, shape: DecoderShape, seed: int = 0) -> Path:
    """Write an F16 GGUF (norm weights F32, as llama.cpp's converter does) of ``shape`` with N(0, 0.02) weights."""
    import gguf

    from gamma_rt.export.gguf_arch import add_qwen3_hparams

    path = Path(path)
    rng = np.random.default_rng(seed)
    pool = (rng.standard_normal(_POOL_SIZE, dtype=np.float32) * 0.02).astype(np.float16)
    writer = gguf.GGUFWriter(str(path), "qwen3")
    writer.add_name(f"random-qwen3-{shape.hidden_size}x{shape.num_hidden_layers}")
    add_qwen3_hparams(writer, shape)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens, scores, types = _vocab(shape.vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    offset = 0
    for name, tshape in tensor_shapes(shape).items():
        if len(tshape) == 1:
            writer.add_tensor(name, np.ones(tshape, dtype=np.float32))
            continue
        n = int(np.prod(tshape))
        # a different slice of the pool per tensor, so no two matrices are identical
        data = np.resize(np.roll(pool, offset % _POOL_SIZE), n).reshape(tshape)
        offset += 7919
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a random-weight Qwen3-shaped F16 GGUF for llama-bench.")
    parser.add_argument("out", help="GGUF file to write")
    parser.add_argument("--preset", choices=["tiny", "small", "full"], default="tiny", help="LLM shape (full = Qwen3-8B)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_random_qwen3_gguf(args.out, PRESETS[args.preset](), args.seed)
    print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
