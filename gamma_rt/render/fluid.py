"""FluidSynth: a MIDI file through a General MIDI soundfont to 16 kHz mono float32.

The synth runs as a subprocess (``fluidsynth -F``, its fast file renderer) with its own reverb and chorus
off, so the audio is the soundfont's samples and nothing after the last note; augmentation adds rooms later.
Each render has a time limit. The soundfont is ``$GAMMA_RT_SOUNDFONT`` or the Debian package's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from gamma_rt.errors import GammaError
from gamma_rt.render.midi import Piece, write_sequence

RATE = 16000
GAP_S = 1.0  # silence between pieces rendered in one run; every voice is cut at a piece's end anyway
GAIN = 0.5  # fluidsynth's master gain; its default 0.2 leaves a sparse piece near -30 dBFS
SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/soundfonts/FluidR3_GM.sf2",
              "/usr/share/sounds/sf2/default-GM.sf2", "/usr/share/soundfonts/default.sf2")
INSTALL = "install them with `apt-get install -y fluidsynth fluid-soundfont-gm` (Debian/Ubuntu)"


class RenderError(GammaError):
    """FluidSynth or its soundfont is missing, or a render failed or ran too long."""


def fluidsynth_binary() -> str:
    path = shutil.which("fluidsynth")
    if path is None:
        raise RenderError(f"fluidsynth is not on PATH: rendering MIDI needs it and a GM soundfont; {INSTALL}")
    return path


def soundfont() -> Path:
    """The General MIDI soundfont: ``$GAMMA_RT_SOUNDFONT`` if set, else the first of SOUNDFONTS present."""
    chosen = os.environ.get("GAMMA_RT_SOUNDFONT")
    if chosen:
        if not Path(chosen).is_file():
            raise RenderError(f"GAMMA_RT_SOUNDFONT={chosen}: no such soundfont file")
        return Path(chosen)
    for candidate in SOUNDFONTS:
        if Path(candidate).is_file():
            return Path(candidate)
    raise RenderError(f"no General MIDI soundfont found (looked in {', '.join(SOUNDFONTS)}); {INSTALL}, "
                      "or point GAMMA_RT_SOUNDFONT at an .sf2 file")


def available() -> str | None:
    """None when FluidSynth and a soundfont are installed, else why not (for a test's skip reason)."""
    try:
        fluidsynth_binary(), soundfont()
    except RenderError as err:
        return str(err)
    return None


def _run(path: Path, out: Path, rate: int, timeout_s: float) -> np.ndarray:
    """Stereo float32 (frames, 2) of the MIDI file at ``path``, rendered by fluidsynth into ``out``."""
    binary, font = fluidsynth_binary(), soundfont()
    command = [binary, "-n", "-i", "-q", "-R", "0", "-C", "0", "-g", str(GAIN), "-r", str(rate),
               "-T", "raw", "-O", "float", "-E", "little", "-F", str(out), str(font), str(path)]
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RenderError(f"fluidsynth took over {timeout_s:.0f} s rendering {path}") from None
    if done.returncode != 0 or not out.is_file():
        tail = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()[-3:]
        raise RenderError(f"fluidsynth failed on {path} (exit {done.returncode}): {' / '.join(tail)}")
    stereo = np.fromfile(out, dtype="<f4")
    return stereo[: len(stereo) // 2 * 2].reshape(-1, 2)


def _cut(stereo: np.ndarray, start_s: float, seconds: float, rate: int) -> np.ndarray:
    """float32 (round(seconds * rate),) mono from ``start_s``, padded with silence past the render's end."""
    first, n = int(round(start_s * rate)), int(round(seconds * rate))
    mono = stereo[first:first + n].mean(axis=1)
    return np.pad(mono, (0, n - len(mono))).astype(np.float32)


def render_midi(path: str | Path, seconds: float, rate: int = RATE, timeout_s: float = 120.0) -> np.ndarray:
    """float32 (round(seconds * rate),) mono: the MIDI file at ``path`` through the soundfont, cut or padded
    with silence to ``seconds``. Raises RenderError when fluidsynth fails or runs past ``timeout_s``."""
    if not Path(path).is_file():
        raise RenderError(f"{path}: no such MIDI file")
    with tempfile.TemporaryDirectory(prefix="gamma-rt-fluid-") as tmp:
        return _cut(_run(Path(path), Path(tmp) / "out.raw", rate, timeout_s), 0.0, seconds, rate)


def render_pieces(pieces: list[Piece], rate: int = RATE, timeout_s: float | None = None) -> list[np.ndarray]:
    """Each piece as float32 (round(piece.seconds * rate),) mono, all rendered in one fluidsynth run (the
    soundfont is loaded once: 16 clips of 15 s take about as long as three rendered apart). ``timeout_s``
    defaults to 30 s plus a second per 10 s of music."""
    if not pieces:
        return []
    fluidsynth_binary(), soundfont()
    with tempfile.TemporaryDirectory(prefix="gamma-rt-fluid-") as tmp:
        path = Path(tmp) / "pieces.mid"
        starts = write_sequence(path, pieces, GAP_S)
        total = sum(p.seconds for p in pieces) + GAP_S * len(pieces)
        stereo = _run(path, Path(tmp) / "out.raw", rate, 30.0 + total / 10 if timeout_s is None else timeout_s)
    return [_cut(stereo, start, p.seconds, rate) for start, p in zip(starts, pieces)]


def render_piece(piece: Piece, rate: int = RATE, timeout_s: float | None = None) -> np.ndarray:
    """:func:`render_pieces` of one piece."""
    return render_pieces([piece], rate, timeout_s)[0]
