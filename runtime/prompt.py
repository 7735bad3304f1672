"""The chat prompt around the audio, from the manifest's ``prompt`` fields, cut where the audio is.

Two layouts, one interface (head, marker, tail, follow_up, stop):

- :class:`ChatPrompt`: ``prompt.user_template`` with ``{audio}`` = audio_start + the windows' embeddings
  (with ``prompt.time_marker`` text between windows when set) + audio_end (GaMMA's own bundles);
- :class:`TemplatePrompt`: the checkpoint's own Jinja chat template (``prompt.chat_template``), rendered
  as transformers renders it, with one user turn holding the audio then the question; the audio item
  renders as ``prompt.audio_placeholder``, which stands for audio_start + the embeddings + audio_end.

Everything up to and including the audio is the *prefix*, the same for every question about a song, so it
is evaluated once and forked; only the part after the audio differs per question.

Text pieces are returned as strings; the decoder tokenizes them. Special tokens (``<|im_start|>``) split
tokenization, so tokenizing the pieces one by one gives the same ids as tokenizing the whole text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gamma_rt.errors import BundleError

from .chat_template import render_chat_template

AUDIO, QUESTION = "{audio}", "{question}"
# stands for the first answer in a rendered conversation, to find what the template puts after an answer
_ANSWER = "\x00gamma-rt-answer\x00"


def prompt_from_manifest(prompt: dict, where: str = "manifest.json") -> "ChatPrompt | TemplatePrompt":
    """The bundle's prompt layout: its chat template when it has one, else GaMMA's user template."""
    if prompt.get("chat_template"):
        return TemplatePrompt.from_manifest(prompt, where)
    return ChatPrompt.from_manifest(prompt, where)


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
        _check_time_marker(out.time_marker, where)
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


MARKER_FIELDS = ("start_s", "start", "index")


def _check_time_marker(marker: str, where: str) -> None:
    """``prompt.time_marker`` may name only MARKER_FIELDS, with a short format spec: a bundle is untrusted,
    and ``{start_s:>999999999}`` would build a gigabyte of text per window."""
    import string

    try:
        parts = list(string.Formatter().parse(marker))
        for _, name, spec, _ in parts:
            if name is None:
                continue
            if name not in MARKER_FIELDS or len(spec or "") > 4 or "{" in (spec or ""):
                raise BundleError(f"{where}: field prompt.time_marker may use {{start_s}}, {{start}} and "
                                  f"{{index}} with a short format, not {{{name}{':' + spec if spec else ''}}}")
        marker.format(start_s=30.0, start="0:30", index=1)
    except (ValueError, IndexError) as e:
        raise BundleError(f"{where}: field prompt.time_marker does not format ({e})") from None


@dataclass(frozen=True)
class TemplatePrompt:
    """A checkpoint's own chat template (Jinja, rendered as transformers' ``apply_chat_template`` does)."""

    chat_template: str
    audio_placeholder: str
    audio_start: str = ""
    audio_end: str = ""
    stop: tuple[str, ...] = ()
    system: str = ""
    template_vars: dict = field(default_factory=dict)  # bos_token, eos_token... as the tokenizer gives them
    where: str = "manifest.json"

    @classmethod
    def from_manifest(cls, prompt: dict, where: str = "manifest.json") -> "TemplatePrompt":
        placeholder = prompt.get("audio_placeholder")
        if not isinstance(placeholder, str) or not placeholder:
            raise BundleError(f"{where}: field prompt.audio_placeholder missing (the text the chat template "
                              "renders for the audio)")
        out = cls(prompt["chat_template"], placeholder, prompt.get("audio_start", "") or "",
                  prompt.get("audio_end", "") or "", tuple(prompt.get("stop", ())), prompt.get("system", "") or "",
                  dict(prompt.get("template_vars", {}) or {}), where)
        out.head()  # a template that does not render, or renders no audio, is refused when the bundle opens
        return out

    def _messages(self, question: str, answer: str | None = None, follow_up: str | None = None) -> list[dict]:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages.append({"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": question}]})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
            messages.append({"role": "user", "content": [{"type": "text", "text": follow_up}]})
        return messages

    def _split(self, question: str) -> tuple[str, str]:
        text = render_chat_template(self.chat_template, self._messages(question), self.template_vars, self.where)
        if text.count(self.audio_placeholder) != 1:
            raise BundleError(f"{self.where}: field prompt.chat_template renders the audio placeholder "
                              f"{self.audio_placeholder!r} {text.count(self.audio_placeholder)} times, not once")
        before, after = text.split(self.audio_placeholder)
        return before, after

    def head(self) -> str:
        """Text before the first audio embedding (the same for every question)."""
        return self._split("?")[0] + self.audio_start

    def marker(self, index: int, start_s: float) -> str:
        return ""  # the checkpoint's processor puts nothing between windows

    def tail(self, question: str) -> str:
        before, after = self._split(question)
        if before + self.audio_start != self.head():
            raise BundleError(f"{self.where}: field prompt.chat_template puts the question before the audio, so "
                              "two questions could not share one audio prefill")
        return self.audio_end + after

    def follow_up(self, question: str) -> str:
        """A later turn: what the template puts after an answer, then a user turn without audio."""
        text = render_chat_template(self.chat_template, self._messages("?", _ANSWER, question), self.template_vars,
                                    self.where)
        if text.count(_ANSWER) != 1:
            raise BundleError(f"{self.where}: field prompt.chat_template does not render an assistant turn as is")
        return text.split(_ANSWER)[1]
