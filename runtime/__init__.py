"""runtime/: the light runtime. numpy + onnxruntime/TensorRT + llama-cpp-python + soundfile/PyAV; never torch
or transformers, and no other stage of gamma-rt.

The public API::

    from gamma_rt.runtime import Pipeline, RuntimeOptions, Sampling, open_audio

    with Pipeline.open("bundle", RuntimeOptions(threads=1)) as pipe:
        for answer in pipe.ask("song.flac", ["What genre is this?", "What is the tempo?"]):
            print(answer.question, answer.text)
        for piece in pipe.stream("song.flac", "Describe it."):
            print(piece, end="")
        talk = pipe.conversation("song.flac")   # a Conversation: talk.ask("And the key?")

Names load on first use, so ``import gamma_rt.runtime.mel`` does not pull in llama.cpp.
"""

from importlib import import_module

__all__ = ["Pipeline", "Answer", "Conversation", "Sampling", "RuntimeOptions", "open_audio"]

_HOME = {
    "Pipeline": ".pipeline",
    "Answer": ".pipeline",
    "Conversation": ".pipeline",
    "Sampling": ".decoder",
    "RuntimeOptions": ".options",
    "open_audio": ".audio",
}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_HOME[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
