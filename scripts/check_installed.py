"""Check that fastelect runs from an installed wheel the way users get it.

    python scripts/check_installed.py [--no-cython] [--no-compiler]

Run with the interpreter of the environment the wheel was installed into,
from a directory that is not the source tree.  Fails (exit 1, one line per
problem) unless:

* ``fastelect._core`` is a compiled module loaded from this environment's
  site-packages, not from a source checkout;
* the compiled core carries no debug sections (ELF ``.debug_*``), i.e. the
  wheel was stripped;
* with ``--no-cython``: Cython cannot be imported;
* with ``--no-compiler``: no C compiler is reachable either (``CC``,
  ``CXX`` and the usual names on PATH fail to run), so nothing the tests
  do could have rebuilt the core.

On a free-threaded CPython it also reports whether importing the core kept
the GIL disabled (it does only when the module declares it may).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import struct
import subprocess
import sys
import sysconfig
from pathlib import Path

_COMPILERS = ("cc", "gcc", "c++", "g++", "clang")


def elf_section_names(path: Path) -> list[str] | None:
    """Section names of an ELF file, or None when it is not ELF (e.g. Mach-O)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF":
        return None
    is64 = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    if is64:
        (shoff,) = struct.unpack_from(end + "Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x3A)
    else:
        (shoff,) = struct.unpack_from(end + "I", data, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x2E)

    def section(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        if is64:
            name, _type, _flags, _addr, offset, size = struct.unpack_from(
                end + "IIQQQQ", data, base
            )
        else:
            name, _type, _flags, _addr, offset, size = struct.unpack_from(
                end + "IIIIII", data, base
            )
        return name, offset, size

    _, str_off, str_size = section(shstrndx)
    strtab = data[str_off : str_off + str_size]
    names = []
    for i in range(shnum):
        name_off = section(i)[0]
        names.append(strtab[name_off : strtab.index(b"\0", name_off)].decode())
    return names


def compiler_reachable() -> list[str]:
    """Compilers that would run: ``CC``/``CXX`` and the usual names on PATH."""
    found = []
    for var in ("CC", "CXX"):
        cmd = os.environ.get(var)
        if cmd:
            probe = subprocess.run([*cmd.split(), "--version"], capture_output=True, check=False)
            if probe.returncode == 0:
                found.append(f"${var}={cmd}")
    for name in _COMPILERS:
        path = shutil.which(name)
        if path is None:
            continue
        probe = subprocess.run([path, "--version"], capture_output=True, check=False)
        if probe.returncode == 0:
            found.append(path)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-cython", action="store_true", help="require that Cython is absent")
    parser.add_argument(
        "--no-compiler",
        action="store_true",
        help="require that Cython and any C compiler are absent",
    )
    args = parser.parse_args()
    problems: list[str] = []

    import fastelect
    import fastelect._core as core

    so = Path(core.__file__ or "")
    site = Path(sysconfig.get_paths()["platlib"]).resolve()
    print(f"fastelect {fastelect.__version__} on Python {sys.version.split()[0]}")
    print(f"compiled core: {so} ({so.stat().st_size} bytes)")
    if so.suffix not in (".so", ".pyd"):
        problems.append(f"fastelect._core is not a compiled module: {so}")
    if site not in so.resolve().parents:
        problems.append(f"fastelect._core comes from {so}, not from site-packages {site}")

    sections = elf_section_names(so)
    if sections is None:
        print("compiled core is not ELF: debug-section check skipped")
    else:
        debug = sorted(s for s in sections if s.startswith((".debug", ".zdebug")))
        if debug:
            problems.append(f"compiled core carries debug info: {', '.join(debug)}")
        else:
            print("compiled core: no debug sections")

    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        state = "enabled" if is_gil_enabled is not None and is_gil_enabled() else "disabled"
        print(f"free-threaded interpreter: GIL {state} after importing the core")

    if args.no_cython or args.no_compiler:
        if importlib.util.find_spec("Cython") is not None:
            problems.append("Cython is importable in the test environment")
        else:
            print("Cython: absent")
    if args.no_compiler:
        compilers = compiler_reachable()
        if compilers:
            problems.append(f"a C compiler is reachable: {', '.join(compilers)}")
        else:
            print("C compiler: none reachable")

    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
