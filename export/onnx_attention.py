"""Fuse the traced attention of our own graphs into ``com.microsoft.MultiHeadAttention``.

ONNX Runtime's transformer optimizer does not match the attention that transformers 5's Whisper eager
path (or our fusion network's cross-attention) traces to, so it stays as MatMul / Softmax / MatMul with
the head split and merge around it. Both trace to the same chain, which this pass rewrites:

    q (B, T, D) [* c1] -> Reshape (B, T, H, Dh) -> Transpose 0,2,1,3 ----------\\
    k (B, S, D)        -> Reshape (B, S, H, Dh) -> Transpose 0,2,3,1 -> MatMul [* c2] -> Softmax -\\
    v (B, S, D)        -> Reshape (B, S, H, Dh) -> Transpose 0,2,1,3 ----------------------------> MatMul
        -> Transpose 0,2,1,3 -> Reshape (B, T, D)

becomes ``MultiHeadAttention(q, k, v, num_heads=H, scale=c1*c2)`` -> (B, T, D). Self-attention is the
case q, k, v from one input. A mask added to the scores before the Softmax (``MatMul [* c2] + bias``, the
Audio Flamingo encoder's padding mask, (B, 1, T, S)) becomes the fused node's ``attention_bias`` input.
``c1`` and ``c2`` must be constants; a chain that differs in any other way is left alone (the parity
tests then still hold, only unfused).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

FUSED_OP = "MultiHeadAttention"


def fuse_attention(model: onnx.ModelProto, n_heads: int) -> int:
    """Rewrite every matching attention chain in ``model`` (in place); returns how many were fused.

    The replaced nodes are dropped; the head-split shape computations they leave unused are pruned by
    the caller (``OnnxModel.prune_graph``).
    """
    graph = model.graph
    producer = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    constants = {t.name: t for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute[0].name == "value":
            constants[n.output[0]] = n.attribute[0].t

    def scalar(name: str) -> float | None:
        t = constants.get(name)
        if t is None:
            return None
        a = numpy_helper.to_array(t)
        return float(a.reshape(-1)[0]) if a.size == 1 else None

    def only(name: str, op: str) -> onnx.NodeProto | None:
        """The producer of ``name`` if it is ``op`` and ``name`` has no other consumer."""
        n = producer.get(name)
        return n if n is not None and n.op_type == op and len(consumers.get(name, [])) == 1 else None

    def perm(n: onnx.NodeProto | None) -> list[int] | None:
        return list(helper.get_attribute_value(n.attribute[0])) if n is not None and n.attribute else None

    def scaled(name: str) -> tuple[str, float, list[onnx.NodeProto]] | None:
        """``name`` = ``x * c`` with ``c`` a constant scalar -> (x, c, [Mul]); otherwise (name, 1, [])."""
        mul = only(name, "Mul")
        if mul is None:
            return name, 1.0, []
        for i in (0, 1):
            c = scalar(mul.input[1 - i])
            if c is not None:
                return mul.input[i], c, [mul]
        return None

    def split_heads(name: str, want: list[int]) -> tuple[str, list[onnx.NodeProto]] | None:
        """``name`` = Transpose(Reshape(x)) with ``want`` as perm -> (x, [Transpose, Reshape])."""
        tr = only(name, "Transpose")
        if perm(tr) != want:
            return None
        rs = only(tr.input[0], "Reshape")
        return (rs.input[0], [tr, rs]) if rs is not None else None

    def scores_and_bias(name: str) -> tuple[tuple | None, tuple[str, list[onnx.NodeProto]] | None]:
        """``name`` = scaled scores [+ bias] -> (scaled(...), (bias, [Add]) or None)."""
        add = only(name, "Add")
        if add is not None:
            for i in (0, 1):
                s = scaled(add.input[i])
                if s is not None and only(s[0], "MatMul") is not None:
                    return s, (add.input[1 - i], [add])
        return scaled(name), None

    fused, dropped, added = 0, set(), []
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        axis = next((helper.get_attribute_value(a) for a in softmax.attribute if a.name == "axis"), -1)
        out_mm = consumers.get(softmax.output[0], [])
        if axis != -1 or len(out_mm) != 1 or out_mm[0].op_type != "MatMul" or out_mm[0].input[0] != softmax.output[0]:
            continue
        out_mm = out_mm[0]
        scores, bias = scores_and_bias(softmax.input[0])
        if scores is None or only(scores[0], "MatMul") is None:
            continue
        qk = producer[scores[0]]
        q_side = split_heads(qk.input[0], [0, 2, 1, 3])
        k_side = split_heads(qk.input[1], [0, 2, 3, 1])  # K is split and transposed for Q @ K^T in one step
        v_side = split_heads(out_mm.input[1], [0, 2, 1, 3])
        merge_tr = consumers.get(out_mm.output[0], [])
        if None in (q_side, k_side, v_side) or len(merge_tr) != 1 or perm(merge_tr[0]) != [0, 2, 1, 3]:
            continue
        merge_rs = consumers.get(merge_tr[0].output[0], [])
        if len(merge_rs) != 1 or merge_rs[0].op_type != "Reshape":
            continue
        q_in = scaled(q_side[0])
        if q_in is None:
            continue
        nodes = [softmax, out_mm, qk, merge_tr[0], merge_rs[0], *scores[2], *q_in[2],
                 *q_side[1], *k_side[1], *v_side[1], *(bias[1] if bias else [])]
        dropped.update(id(n) for n in nodes)
        # MultiHeadAttention inputs: query, key, value, bias, key_padding_mask, attention_bias
        inputs = [q_in[0], k_side[0], v_side[0]] + (["", "", bias[0]] if bias else [])
        added.append((merge_rs[0], helper.make_node(
            FUSED_OP,
            inputs,
            [merge_rs[0].output[0]],
            name=f"{FUSED_OP}_{fused}",
            domain="com.microsoft",
            num_heads=n_heads,
            scale=float(np.float32(q_in[1] * scores[1])),
        )))
        fused += 1
    if not fused:
        return 0
    # Each fused node takes the place of its chain's last node, so the graph stays topologically sorted.
    replace = {id(last): node for last, node in added}
    kept = [replace.get(id(n), n) for n in graph.node if id(n) not in dropped or id(n) in replace]
    del graph.node[:]
    graph.node.extend(kept)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return fused
