"""The manifest's ``audio.chain``: which audio graphs run per window, and how their values connect.

Each step names a component, maps its graph inputs to value names (``mel``, ``mel_mask``, ``window_index``,
or an earlier step's output) and its graph outputs to the value names later steps read; the last value is
``embeddings``. Everything that runs the audio side (ONNX Runtime, TensorRT, the engine builders, the
cosine report, bench) walks the chain and knows no family. Pure Python: the runtime imports this.
"""

from __future__ import annotations

from dataclasses import dataclass

from gamma_rt.errors import BundleError

# Value names the runtime feeds into the audio chain; the chain's last value must be EMBEDDINGS.
CHAIN_INPUTS = ("mel", "mel_mask", "window_index")
EMBEDDINGS = "embeddings"


@dataclass(frozen=True)
class ChainStep:
    """One audio graph in the per-window chain: ``inputs`` maps the graph's input names to value names,
    ``outputs`` its output names to the value names later steps read."""

    component: str
    inputs: dict
    outputs: dict


def step(component: str, inputs: dict, outputs: dict) -> ChainStep:
    return ChainStep(component, dict(inputs), dict(outputs))


# What a bundle without ``audio.chain`` (schema 1, written before chains were recorded) runs: its four
# graphs, the two experts on the same mel, fusion, then the projector. Kept as written then; new bundles
# always record their own chain.
SCHEMA_1_CHAIN = (
    step("temporal_encoder", {"mel": "mel"}, {"hidden": "temporal"}),
    step("global_encoder", {"mel": "mel"}, {"hidden": "global"}),
    step("fusion", {"temporal": "temporal", "global": "global"}, {"fused": "fused"}),
    step("projector", {"fused": "fused"}, {"embeddings": EMBEDDINGS}),
)


def read_chain(raw, where: str) -> tuple[ChainStep, ...]:
    """``audio.chain`` of a manifest (None: a schema-1 bundle's chain), checked: every value a step reads is
    a chain input or made by an earlier step, and some step makes ``embeddings``."""
    if raw is None:
        return SCHEMA_1_CHAIN
    if not isinstance(raw, (list, tuple)) or not raw:
        raise BundleError(f"{where}: field audio.chain must be a non-empty list")
    steps = []
    for i, item in enumerate(raw):
        if isinstance(item, ChainStep):
            steps.append(item)
            continue
        ok = (isinstance(item, dict) and isinstance(item.get("component"), str)
              and all(isinstance(item.get(k), dict) for k in ("inputs", "outputs")))
        if not ok:
            raise BundleError(f"{where}: field audio.chain[{i}] needs component (text), inputs and outputs (objects)")
        steps.append(step(item["component"], item["inputs"], item["outputs"]))
    check_chain(steps, where)
    return tuple(steps)


def check_chain(steps, where: str) -> None:
    known = set(CHAIN_INPUTS)
    for i, s in enumerate(steps):
        for graph_input, value in s.inputs.items():
            if value not in known:
                raise BundleError(f"{where}: field audio.chain[{i}].inputs.{graph_input} reads {value!r}, "
                                  "which no earlier step makes")
        known.update(s.outputs.values())
    if EMBEDDINGS not in known:
        raise BundleError(f"{where}: field audio.chain makes no {EMBEDDINGS!r} value")


# --- the chain's shape, for runners that place values in buffers and steps on streams -------------------


def producers(chain) -> dict[str, tuple[str, str]]:
    """value name -> (component, graph output) of the step that makes it."""
    return {value: (s.component, out) for s in chain for out, value in s.outputs.items()}


def fed_values(chain) -> list[str]:
    """The chain inputs (``CHAIN_INPUTS``) some step reads, in first-read order."""
    out = []
    for s in chain:
        for value in s.inputs.values():
            if value in CHAIN_INPUTS and value not in out:
                out.append(value)
    return out


def shared_inputs(chain) -> dict[tuple[str, str], tuple[str, str]]:
    """(component, graph input) -> the (component, tensor) whose buffer it reads: an earlier step's output,
    or, for a chain input several steps read, its first reader's input. Keys not listed own a buffer."""
    made = producers(chain)
    first_reader: dict[str, tuple[str, str]] = {}
    shared = {}
    for s in chain:
        for graph_input, value in s.inputs.items():
            if value in made:
                shared[(s.component, graph_input)] = made[value]
            elif value in first_reader:
                shared[(s.component, graph_input)] = first_reader[value]
            else:
                first_reader[value] = (s.component, graph_input)
    return shared


def fed_at(chain) -> dict[str, tuple[str, str]]:
    """chain input value -> the (component, graph input) buffer it is copied into."""
    out = {}
    for s in chain:
        for graph_input, value in s.inputs.items():
            if value in CHAIN_INPUTS:
                out.setdefault(value, (s.component, graph_input))
    return out


def waves(chain) -> list[list[str]]:
    """The steps in waves: a step runs in the wave after the last step whose value it reads, so steps of
    one wave are independent and may run at the same time (GaMMA: both experts, then fusion, then projector)."""
    made = producers(chain)
    wave_of: dict[str, int] = {}
    for s in chain:
        after = [wave_of[made[v][0]] for v in s.inputs.values() if v in made]
        wave_of[s.component] = 1 + max(after) if after else 0
    out: list[list[str]] = [[] for _ in range(max(wave_of.values()) + 1)]
    for s in chain:
        out[wave_of[s.component]].append(s.component)
    return out


def stream_of(chain) -> dict[str, int]:
    """component -> CUDA stream index: the i-th step of its wave runs on stream i."""
    return {name: i for wave in waves(chain) for i, name in enumerate(wave)}


def embeddings_at(chain) -> tuple[str, str]:
    """(component, graph output) that makes ``embeddings``."""
    return producers(chain)[EMBEDDINGS]
