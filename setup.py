"""Declares the one C extension, fastproxy._core (Cython wrapper + the C data plane in src_c/).

FASTPROXY_DEBUG=1 at build time compiles the debug build: FP_DEBUG live counters of connections,
pipes and file descriptors (tests assert they return to zero) and internal assertions.
"""
import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTPROXY_DEBUG", "") not in ("", "0")

ext = Extension(
    "fastproxy._core",
    sources=["fastproxy/_core.pyx"] + sorted(glob.glob("src_c/*.c")),
    include_dirs=["src_c"],
    define_macros=[("FP_DEBUG", "1")] if DEBUG else [("NDEBUG", "1")],
    extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-fvisibility=hidden"] + (["-g", "-O1"] if DEBUG else []),
    libraries=["pthread"],
)

setup(
    ext_modules=cythonize(
        [ext],
        compiler_directives={"language_level": "3", "embedsignature": True},
        compile_time_env={"FP_DEBUG": DEBUG},
    ),
)
