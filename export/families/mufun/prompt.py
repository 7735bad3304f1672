"""MuFun's ``qwen2_instruct`` conversation (tinyllava/data/template/qwen2_instruct_template.py) as a chat
template, so the runtime renders it like any checkpoint's own template.

    {SYSTEM} USER: <audio>\\n{question} ASSISTANT: {answer}<|im_end|>USER: {question} ASSISTANT: 

The system line once, then per turn ``USER: `` + question + `` `` and ``ASSISTANT: `` + answer + ``<|im_end|>``;
the generation prompt is ``ASSISTANT: `` (the RL path's prompt: the empty answer's ``<|im_end|>`` cut off).
``<audio>`` is a sentinel, not a vocabulary token: MuFun splits the text at it and tokenizes each piece
alone, which is what the runtime does with the text before and after the audio.
"""

from __future__ import annotations

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions.")
AUDIO = "<audio>"
END_OF_ANSWER = "<|im_end|>"

# A user turn's content list: each audio item becomes "<audio>\n" (the layout of MuFun's training data,
# "<audio>\nWhat ..."), text items follow as they are.
CHAT_TEMPLATE = (
    "{%- set system = messages[0]['content'] if messages[0]['role'] == 'system' else \"" + SYSTEM + "\" -%}"
    "{{- system + ' ' -}}"
    "{%- for message in messages if message['role'] != 'system' -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
    "{%- else -%}{%- set text = namespace(value='') -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item.get('type') == 'audio' or 'audio' in item -%}{%- set text.value = text.value + '" + AUDIO + "\\n' -%}"
    "{%- elif item.get('type') == 'text' or 'text' in item -%}{%- set text.value = text.value + item['text'] -%}"
    "{%- endif -%}{%- endfor -%}{%- set text = text.value -%}{%- endif -%}"
    "{{- 'USER: ' + text + ' ' -}}"
    "{%- else -%}{{- 'ASSISTANT: ' + message['content'] + '" + END_OF_ANSWER + "' -}}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT: ' -}}{%- endif -%}"
)


def prompt_section(stop: list[str]) -> dict:
    """The manifest's ``prompt``: the template, ``<audio>`` as the placeholder, ``<|im_end|>`` first in ``stop``
    (MuFun ends every answer with it; the folder's eos tokens follow)."""
    return {
        "chat_template": CHAT_TEMPLATE,
        "audio_placeholder": AUDIO,
        "audio_start": "",
        "audio_end": "",
        "stop": list(dict.fromkeys([END_OF_ANSWER, *stop])),
    }
