# cython: language_level=3
"""fastproxy._core: the one extension module. Each concern lives in its own .pxi (Python-facing
wrapper) with a .pxd beside it that only mirrors a C header of src_c/."""

include "_engine.pxi"
include "_peek.pxi"
include "_lookup.pxi"
include "_obs.pxi"
