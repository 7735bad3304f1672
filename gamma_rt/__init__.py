"""gamma-rt: a compiled edge/offline inference runtime for GaMMA-class music LMMs.

Stages, one folder each, data flowing one way:
checkpoint -> ``gamma_rt.export`` -> bundle -> ``gamma_rt.quant`` -> bundle -> ``gamma_rt.runtime``.
``gamma_rt.bench`` observes all of them. The bundle's ``manifest.json`` is the only contract between stages.
"""

__version__ = "0.1.0"
