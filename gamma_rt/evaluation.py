"""``gamma-rt eval BUNDLE --synthetic N``: task accuracy of a bundle on held-out labelled synthetic songs
(``--real N``: on held-out real compositions rendered through a soundfont, gamma_rt/render/scoring.py).

Each of N held-out songs (seeds from ``synthetic_tasks.EVAL_SEED_BASE`` up, never trained on) is asked every
scored question through the runtime, greedily; accuracy per attribute is key exact, tempo within ±4 %,
meter exact, instrument-set F1 and event time within ±2 s. Each song is also asked for its one-line
description, and per pair of answers where one contains the other (the description's key, tempo and meter
beside the key, tempo and meter answers) the share of songs whose two answers agree is reported
(gamma_rt/agreement.py). ``--checkpoint CKPT`` asks the PyTorch model
the same questions in the same run (needs torch), so a path's accuracy is compared with its source's.

The bundle side imports no torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from gamma_rt.agreement import agreement_rates
from gamma_rt.synthetic_tasks import ATTRIBUTES, QUESTION_OF, SCORED_QUESTIONS, chance, eval_song, score

MAX_ANSWER_TOKENS = 32
DESCRIPTION_TOKENS = 48  # the template description is up to 36 tokens of the built-in's BPE
DESCRIPTION = """\
Ask N held-out synthetic songs (never trained on) every scored question and print accuracy per attribute:
key exact, tempo within 4 %, meter exact, instrument-set F1, event time within 2 s; chance beside each.
Then, per pair of answers where one contains the other (the description's key, tempo and meter beside the
key, tempo and meter answers), the share of songs whose two answers agree.

--real N asks N held-out real compositions (Bach chorales and folk tunes from music21's corpus, rendered
through a GM soundfont; never trained on) instead: key, tempo, meter and instrument F1 beside the best
constant guess on the same pieces, and the count of answers that could not be read.

Examples:
  gamma-rt eval bundle --synthetic 100
  gamma-rt eval bundle --real 48 --json > eval_real.json
  gamma-rt eval bundle --synthetic 50 --checkpoint ckpt --json > eval.json
"""


def register(sub: argparse._SubParsersAction) -> None:
    from gamma_rt.runtime.options import add_runtime_options

    p = sub.add_parser("eval", help="task accuracy of a bundle on held-out labelled synthetic songs",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path, help="bundle folder")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--synthetic", type=int, metavar="N", help="held-out synthetic songs to ask")
    which.add_argument("--real", type=int, metavar="N",
                       help="held-out real compositions to ask (1-48; needs music21, fluidsynth and a GM soundfont)")
    p.add_argument("--seed", type=int, default=0, help="which held-out songs (default 0)")
    p.add_argument("--checkpoint", type=Path, help="also score this PyTorch checkpoint folder (needs torch)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_runtime_options(p)
    p.set_defaults(func=cmd_eval)


def bundle_replies(bundle: Path, songs, options, description: bool = False) -> list[dict[str, str]]:
    """Per song, the bundle's greedy reply to each scored question, by attribute (and to the description
    question, as "description", where ``description``)."""
    from gamma_rt.runtime.pipeline import Pipeline

    with Pipeline.open(bundle, options) as pipe:
        return pipeline_replies(pipe, songs, description)


def pipeline_replies(pipe, songs, description: bool = False) -> list[dict[str, str]]:
    """:func:`bundle_replies` on an open ``Pipeline``, so a caller can read its state afterwards (its cache)."""
    from gamma_rt.synth import render

    return [scored_replies(pipe, render(song, pipe.layout.sample_rate), description) for song in songs]


def scored_replies(pipe, audio, description: bool = False) -> dict[str, str]:
    """An open ``Pipeline``'s greedy reply to each scored question about ``audio`` (samples or a file), by
    attribute; with ``description``, also to the one-line description question (one encode for all)."""
    names = ATTRIBUTES + (("description",) if description else ())
    questions = list(SCORED_QUESTIONS) + ([QUESTION_OF["description"].text] if description else [])
    limits = [MAX_ANSWER_TOKENS] * len(ATTRIBUTES) + ([DESCRIPTION_TOKENS] if description else [])
    replies = pipe.ask(audio, questions, max_tokens=limits)
    return {a: r.text for a, r in zip(names, replies)}


def checkpoint_scored_replies(checkpoint: Path, songs) -> list[dict[str, str]]:
    """Per song, the PyTorch checkpoint's greedy reply to each scored question, by attribute (needs torch)."""
    from gamma_rt.export.families.gamma.train import checkpoint_replies

    replies = checkpoint_replies(checkpoint, songs, list(SCORED_QUESTIONS), MAX_ANSWER_TOKENS)
    return [dict(zip(ATTRIBUTES, r)) for r in replies]


def accuracy(songs, replies: list[dict[str, str]]) -> dict[str, float]:
    """Mean score per attribute over ``songs``."""
    scores = [score(s, r) for s, r in zip(songs, replies)]
    return {a: round(sum(s[a] for s in scores) / max(1, len(scores)), 4) for a in ATTRIBUTES}


def evaluate(bundle: Path, n: int, seed: int = 0, options=None, checkpoint: Path | None = None,
             say=lambda text: None) -> dict:
    """The eval record: accuracy per attribute of the bundle (and the checkpoint), chance, timings."""
    from gamma_rt.runtime.options import RuntimeOptions

    songs = [eval_song(i, seed) for i in range(n)]
    start = time.perf_counter()
    say(f"asking {n} held-out songs {len(ATTRIBUTES)} scored questions and the description each through {bundle}")
    replies = bundle_replies(bundle, songs, options or RuntimeOptions(), description=True)
    record = {"bundle": str(bundle), "songs": n, "seed": seed, "accuracy": accuracy(songs, replies),
              "chance": {a: round(v, 4) for a, v in chance().items()},
              "agreement": agreement_rates(replies),
              "seconds": round(time.perf_counter() - start, 1),
              "example": {"song": songs[0].__dict__, "replies": replies[0]} if songs else None}
    if checkpoint is not None:
        say(f"asking the same songs through the PyTorch checkpoint {checkpoint}")
        record["checkpoint"] = str(checkpoint)
        record["checkpoint_accuracy"] = accuracy(songs, checkpoint_scored_replies(checkpoint, songs))
        record["training"] = training_record(checkpoint)
    return record


def training_record(checkpoint: Path) -> dict | None:
    """The checkpoint's train_record.json (from gamma-rt train), its loss curve cut to every 50th step."""
    path = Path(checkpoint) / "train_record.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    losses = record.pop("losses", None)
    if losses:
        record["loss_every_50_steps"] = losses[::50] + losses[-1:]
    return record


def cmd_eval(args) -> int:
    from gamma_rt.errors import GammaError
    from gamma_rt.runtime.options import RuntimeOptions

    if args.real is not None:
        return cmd_eval_real(args)
    if args.synthetic < 1:
        raise GammaError(f"--synthetic {args.synthetic}: ask at least one song")
    from gamma_rt.machine import describe

    options = RuntimeOptions.from_args(args)
    record = evaluate(args.bundle, args.synthetic, args.seed, options, args.checkpoint,
                      say=lambda text: print(text, file=sys.stderr, flush=True))
    record["command"] = "gamma-rt " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["eval"] else None
    record["machine"] = describe(options.threads or 0)
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    header = f"{'attribute':<12} {'bundle':>8}" + (f" {'pytorch':>8}" if "checkpoint_accuracy" in record else "")
    print(header + f" {'chance':>8}")
    for a in ATTRIBUTES:
        row = f"{a:<12} {record['accuracy'][a]:>8.3f}"
        if "checkpoint_accuracy" in record:
            row += f" {record['checkpoint_accuracy'][a]:>8.3f}"
        print(row + f" {record['chance'][a]:>8.3f}")
    print(f"{args.synthetic} held-out songs (seed {args.seed}) in {record['seconds']:.0f} s")
    print(agreement_text(record["agreement"]))
    return 0


def cmd_eval_real(args) -> int:
    from gamma_rt.errors import GammaError
    from gamma_rt.machine import describe
    from gamma_rt.render.scoring import ATTRIBUTES as REAL_ATTRIBUTES
    from gamma_rt.render.scoring import evaluate_real
    from gamma_rt.runtime.options import RuntimeOptions

    if args.real < 1:
        raise GammaError(f"--real {args.real}: ask at least one piece")
    if args.checkpoint is not None:
        raise GammaError("--checkpoint goes with --synthetic; --real asks the bundle only")
    options = RuntimeOptions.from_args(args)
    record = evaluate_real(args.bundle, args.real, options, say=lambda text: print(text, file=sys.stderr, flush=True))
    record["command"] = "gamma-rt " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["eval"] else None
    record["machine"] = describe(options.threads or 0)
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(f"{'attribute':<12} {'bundle':>8} {'constant':>9} {'unread':>7}")
    for a in REAL_ATTRIBUTES:
        print(f"{a:<12} {record['accuracy'][a]:>8.3f} {record['constant_guess'][a]:>9.3f} {record['unparseable'][a]:>7}")
    print(f"{record['songs']} held-out real compositions in {record['seconds']:.0f} s; constant guess: "
          f"{json.dumps(record['constant_answer'])}")
    print(agreement_text(record["agreement"]))
    return 0


def agreement_text(rates: dict[str, dict]) -> str:
    """The agreement block of eval's text output: per pair, the rate and its counts."""
    lines = [f"{'agreement':<20} {'rate':>6} {'agree':>6} {'differ':>6} {'unread':>6}"]
    for name, r in rates.items():
        lines.append(f"{name:<20} {r['agreement']:>6.3f} {r['agree']:>6} {r['disagree']:>6} {r['unparseable']:>6}")
    return "\n".join(lines)
