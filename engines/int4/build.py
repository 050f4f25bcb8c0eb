"""Just-in-time build and load of the batched INT4 C++ kernel (``torch.ops.abtest_int4``).

Compiled once per source version and torch version with ``torch.utils.cpp_extension.load``
under a root folder (``var/torch_extensions`` of the working directory unless a caller passes
another, or sets :data:`BUILD_ROOT`; the engines read no environment), under a file lock so two
processes never build into the same folder at once; later processes only load the cached
shared library. No Python bindings (a ``TORCH_LIBRARY`` op):
one translation unit, about a minute on two cores.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import time
from pathlib import Path

__all__ = ["SOURCE", "SOURCES", "HEADERS", "CFLAGS", "BUILD_ROOT", "build_dir", "load_kernel"]

SOURCE = Path(__file__).with_name("kernel.cpp")
# the AMX and AVX512-BF16 kernels: their functions carry their ISA as target attributes (the
# library loads on any AVX-512 CPU)
SOURCES = (SOURCE, Path(__file__).with_name("amx.cpp"), Path(__file__).with_name("dot.cpp"))
HEADERS = (Path(__file__).with_name("simd.h"),)  # included by the sources: part of the build's digest
# ISA of the kernel: AVX-512 F (plus FMA); dispatch checks the CPU's flags at run time before
# loading it.
CFLAGS = ["-O3", "-fopenmp", "-mavx512f", "-mfma"]


# where kernel builds are cached when no root is passed (relative: to the working directory)
BUILD_ROOT: str | os.PathLike = "var/torch_extensions"


def build_dir(root: str | os.PathLike | None = None) -> Path:
    import torch

    base = Path(root or BUILD_ROOT).absolute()
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES + HEADERS) + " ".join(CFLAGS).encode()
                            + torch.__version__.encode())
    return base / f"abtest_int4-{digest.hexdigest()[:12]}"


def _loaded() -> bool:
    import torch

    try:
        return hasattr(torch.ops.abtest_int4, "int4_mm")
    except Exception:  # noqa: BLE001 - no such namespace yet
        return False


def _ninja_on_path() -> None:
    """cpp_extension runs ``ninja`` from PATH: add the pip package's binary when the
    environment's bin folder is not on PATH (a venv's python run without activating it)."""
    if shutil.which("ninja"):
        return
    try:
        import ninja
    except ImportError:
        return  # cpp_extension then raises a clear error, and dispatch falls back
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def load_kernel(root: str | os.PathLike | None = None, *, verbose: bool = False) -> float:
    """Build (when not cached) and load the kernel library; returns the seconds it took.
    Raises whatever the compiler or loader raised."""
    from torch.utils import cpp_extension

    t0 = time.perf_counter()
    if _loaded():
        return 0.0  # a second library registering the same op namespace would abort the process
    _ninja_on_path()
    d = build_dir(root)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".abtest-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            cpp_extension.load(
                name="abtest_int4",
                sources=[str(p) for p in SOURCES],
                extra_cflags=CFLAGS,
                extra_ldflags=["-fopenmp"],
                build_directory=str(d),
                is_python_module=False,
                with_cuda=False,
                verbose=verbose,
            )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if not _loaded():
        raise RuntimeError("abtest_int4 library loaded without its int4_mm op")
    return time.perf_counter() - t0
