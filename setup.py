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
# Free threading: not declared (no "freethreading_compatible" directive), so a
# free-threaded interpreter re-enables the GIL when it imports the core.  The
# read path is ready -- is_leader() is an atomic load and a clock read, and
# slot snapshots are copied under a seqlock with one writer thread per slot
# -- but Campaign's Python-object fields (leader_id, etag, ...) are replaced
# by the elector's thread without a critical section while status() reads
# them from others through getters that take one: without the GIL that is a
# use-after-free.  Declare it once every Campaign write of an object field
# holds the same critical section (cython.critical_section).
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
