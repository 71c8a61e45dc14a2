"""Builds fastelect's one compiled extension, ``fastelect._core``.

Everything else about the package lives in pyproject.toml.  Set
``FASTELECT_DEBUG_BUILD=1`` for an unoptimised build with assertions and
line tracing, useful under gdb and coverage.
"""

import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTELECT_DEBUG_BUILD", "") not in ("", "0")

libraries = ["rt"] if sys.platform.startswith("linux") else []
extra_compile_args = ["-O0", "-g3", "-UNDEBUG"] if DEBUG else ["-O2"]
directives = {
    "language_level": "3",
    "boundscheck": DEBUG,
    "wraparound": False,
    "cdivision": True,
    "embedsignature": True,
    "linetrace": DEBUG,
}

extensions = [
    Extension(
        "fastelect._core",
        ["src/fastelect/_core.pyx"],
        libraries=libraries,
        extra_compile_args=extra_compile_args,
        define_macros=[("CYTHON_TRACE_NOGIL", "1")] if DEBUG else [],
    )
]

print(f"fastelect: building the compiled core ({'debug' if DEBUG else 'release'} build)")
setup(ext_modules=cythonize(extensions, compiler_directives=directives))
