"""Declares the one C extension, fastproxy._core (Cython wrapper + the C data plane in src_c/, and
the C++ shim over RE2, src_c/fp_re2.cc, the one regex engine of route matches).

FASTPROXY_DEBUG=1 at build time compiles the debug build: FP_DEBUG live counters of connections,
pipes and file descriptors (tests assert they return to zero) and internal assertions.

RE2 is linked dynamically (Debian's libre2-dev; at run time libre2-9, which brings libstdc++):
Debian's libre2.a is not position-independent (initial-exec TLS relocations), so it cannot go into
a shared object. Only fp_* and PyInit symbols are exported from the extension.
"""
import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("FASTPROXY_DEBUG", "") not in ("", "0")

C_ARGS = ["-std=gnu11"]
CXX_ARGS = ["-std=c++17"]
COMMON = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden"] + \
    (["-g", "-O1"] if DEBUG else [])


def cxx_for(cc: str) -> str:
    """The C++ driver matching the C compiler `cc` ($CXX wins): clang -> clang++, else g++."""
    if os.environ.get("CXX"):
        return os.environ["CXX"]
    base = os.path.basename(cc)
    if "clang" in base:
        return os.path.join(os.path.dirname(cc), base.replace("clang", "clang++", 1))
    return os.path.join(os.path.dirname(cc), base.replace("gcc", "g++", 1)) if "gcc" in base else "g++"


class BuildExt(build_ext):
    """Compiles .c files as C (gnu11) and .cc files as C++ (c++17) within one extension, with the
    C++ driver that matches the C compiler (so sanitizer builds with CC=clang stay one toolchain)."""

    def build_extensions(self) -> None:
        compile_one = self.compiler._compile

        def _compile(obj, src, ext, cc_args, extra_postargs, pp_opts):  # type: ignore[no-untyped-def]
            lang = CXX_ARGS if src.endswith(".cc") else C_ARGS
            compiler_so = self.compiler.compiler_so
            if src.endswith(".cc"):
                self.compiler.compiler_so = [cxx_for(compiler_so[0])] + compiler_so[1:]
            try:
                compile_one(obj, src, ext, cc_args, lang + COMMON, pp_opts)
            finally:
                self.compiler.compiler_so = compiler_so

        self.compiler._compile = _compile
        # link with the C++ driver (the shim needs the C++ runtime); the Cython module stays C
        self.compiler.linker_so = [cxx_for(self.compiler.linker_so[0])] + self.compiler.linker_so[1:]
        super().build_extensions()


ext = Extension(
    "fastproxy._core",
    sources=["fastproxy/_core.pyx"] + sorted(glob.glob("src_c/*.c")) + ["src_c/fp_re2.cc"],
    include_dirs=["src_c"],
    define_macros=[("FP_DEBUG", "1")] if DEBUG else [("NDEBUG", "1")],
    libraries=["re2", "pthread"],
    extra_link_args=["-Wl,--exclude-libs,ALL"],
)

setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=cythonize(
        [ext],
        compiler_directives={"language_level": "3", "embedsignature": True},
        compile_time_env={"FP_DEBUG": DEBUG},
    ),
)
