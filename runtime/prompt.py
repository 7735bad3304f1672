"""The chat prompt around the audio, from the manifest's ``prompt`` fields, cut where the audio is.

A user turn is ``prompt.user_template`` with ``{audio}`` = audio_start + the windows' embeddings (with
``prompt.time_marker`` text between windows when set) + audio_end. Everything up to and including the
audio is the *prefix*, the same for every question about a song, so it is evaluated once and forked;
only the part after the audio (audio_end, the question, the assistant header) differs per question.

Text pieces are returned as strings; the decoder tokenizes them. Special tokens (``<|im_start|>``) split
tokenization, so tokenizing the pieces one by one gives the same ids as tokenizing the whole text.
"""

from __future__ import annotations

from dataclasses import dataclass

from gamma_rt.errors import BundleError

AUDIO, QUESTION = "{audio}", "{question}"


@dataclass(frozen=True)
class ChatPrompt:
    """The prompt format of a bundle (its manifest's ``prompt`` object)."""

    user_template: str
    audio_start: str
    audio_end: str
    time_marker: str = ""
    system: str = ""
    stop: tuple[str, ...] = ()

    @classmethod
    def from_manifest(cls, prompt: dict, where: str = "manifest.json") -> "ChatPrompt":
        try:
            out = cls(
                user_template=prompt["user_template"],
                audio_start=prompt["audio_start"],
                audio_end=prompt["audio_end"],
                time_marker=prompt.get("time_marker", "") or "",
                system=prompt.get("system", "") or "",
                stop=tuple(prompt.get("stop", ())),
            )
        except KeyError as e:
            raise BundleError(f"{where}: field prompt.{e.args[0]} missing") from None
        template = out.user_template
        if template.count(AUDIO) != 1 or template.count(QUESTION) != 1:
            raise BundleError(f"{where}: field prompt.user_template must hold {AUDIO} and {QUESTION} once each")
        if template.index(AUDIO) > template.index(QUESTION):
            # The question must come after the audio, or no two questions could share the audio prefill.
            raise BundleError(f"{where}: field prompt.user_template puts {QUESTION} before {AUDIO}")
        return out

    # --- the pieces, in order ---------------------------------------------------------------------

    def head(self) -> str:
        """Text before the first audio embedding: system turn, user header, audio_start."""
        system = f"<|im_start|>system\n{self.system}<|im_end|>\n" if self.system else ""
        return system + self.user_template.split(AUDIO)[0] + self.audio_start

    def marker(self, index: int, start_s: float) -> str:
        """Text before window ``index`` (none before the first): the time marker at the window's start.

        ``time_marker`` may use ``{start_s}`` (seconds, float), ``{start}`` (m:ss) and ``{index}``."""
        if index == 0 or not self.time_marker:
            return ""
        minutes, seconds = divmod(int(round(start_s)), 60)
        return self.time_marker.format(start_s=start_s, start=f"{minutes}:{seconds:02d}", index=index)

    def tail(self, question: str) -> str:
        """Text after the last audio embedding: audio_end, the rest of the user turn, the assistant header."""
        return self.audio_end + self.user_template.split(AUDIO)[1].replace(QUESTION, question)

    def follow_up(self, question: str) -> str:
        """A later turn of a conversation: closes the previous answer, then a user turn without audio."""
        turn = self.user_template.replace(AUDIO + "\n", "").replace(AUDIO, "").replace(QUESTION, question)
        return self.end_of_turn() + turn

    def end_of_turn(self) -> str:
        """What closes an assistant turn: the first stop string and a newline (ChatML ``<|im_end|>\\n``)."""
        return (self.stop[0] if self.stop else "<|im_end|>") + "\n"
