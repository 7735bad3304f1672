"""gamma-rt: a compiled edge/offline inference runtime for GaMMA-class music LMMs.

Stages, one folder each, data flowing one way:
checkpoint -> ``gamma_rt.export`` -> bundle -> ``gamma_rt.quant`` -> bundle -> ``gamma_rt.runtime``.
``gamma_rt.bench`` observes all of them. The bundle's ``manifest.json`` is the only contract between stages.
"""

__version__ = "0.1.0"


def _load_llama_cpp_first() -> None:
    """Load llama.cpp's shared libraries before anything imports numpy.

    Measured on an H100 box (llama.cpp built with CUDA 13 through native/build.sh, numpy 2.5): when
    libggml-cuda is loaded after numpy, loading a model with GPU layers segfaults inside libggml-cuda;
    loaded first, it works. Importing llama_cpp here, as gamma_rt is imported, puts it first for the
    CLI and for any program that imports gamma_rt before numpy.
    """
    try:
        import llama_cpp  # noqa: F401
    except (ImportError, OSError):  # reported where the decoder is opened, with the context of the command
        pass


_load_llama_cpp_first()
