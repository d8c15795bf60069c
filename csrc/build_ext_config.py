"""The one list of sources and flags for the native extension ``mulo._C`` (setup.py imports this file;
CMakeLists.txt globs the same ``csrc/*.cpp`` / ``csrc/*.cu``).

- The CPU kernels are always built (``-O3``, OpenMP; the SIMD variants select their instruction set with
  ``#pragma GCC target`` per file and are chosen at run time, so the binary runs on any x86-64 CPU).
- The CUDA kernels are added when a CUDA toolkit is found (``CUDA_HOME`` or ``nvcc`` on ``PATH``), as SASS
  for sm_80 and sm_90 (``MULO_CUDA_ARCHS="80;90"`` to change) and PTX of the newest of them, which a newer
  GPU JIT-compiles; ``MULO_BUILD_CUDA=0`` skips them.
- A failed native build prints a warning and leaves mulo usable with its reference backend, unless
  ``MULO_BUILD_EXT=1`` asks for the build to be mandatory (CI sets it).
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

EXT_NAME = "mulo._C"


def _cuda_home() -> str | None:
    if os.environ.get("MULO_BUILD_CUDA", "auto") == "0":
        return None
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for home in candidates:
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")) and _cudart_dirs(home):
            return home
    return None


def _cudart_dirs(home: str) -> list[str]:
    """The toolkit's library directories that hold libcudart (lib64 on most installs, lib on some)."""
    return [
        d
        for d in (os.path.join(home, "lib64"), os.path.join(home, "lib"))
        if glob.glob(os.path.join(d, "libcudart.so*"))
    ]


def _archs() -> list[str]:
    return [a.strip() for a in os.environ.get("MULO_CUDA_ARCHS", "80;90").replace(",", ";").split(";") if a.strip()]


def extensions(root: str) -> list:
    """``[mulo._C]`` built from csrc/ (CPU always, CUDA when a toolkit is found), or ``[]`` without sources."""
    csrc = os.path.join(root, "csrc")
    cpp = sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(csrc, "*.cpp")))
    cu = sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(csrc, "*.cu")))
    if not cpp:
        return []
    try:
        from torch.utils import cpp_extension
    except ImportError:
        print("mulo: torch is not importable at build time; skipping the native extension", file=sys.stderr)
        return []
    cxx = ["-O3", "-g0", "-std=c++20", "-fopenmp", "-fno-math-errno", "-ffp-contract=fast", "-Wno-unknown-pragmas"]
    cuda_home = _cuda_home() if cu else None
    if cuda_home is not None:
        os.environ["CUDA_HOME"] = cuda_home
        cpp_extension.CUDA_HOME = cuda_home  # torch resolved it at import; make both agree
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in _archs()]
        # plus PTX of the newest arch: a newer GPU JIT-compiles it instead of failing with "no kernel image"
        newest = max(_archs(), key=int)
        gencode.append(f"-gencode=arch=compute_{newest},code=compute_{newest}")
        nvcc = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo", *gencode]
        return [
            cpp_extension.CUDAExtension(
                EXT_NAME,
                cpp + cu,
                define_macros=[("MULO_WITH_CUDA", "1")],
                extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                library_dirs=_cudart_dirs(cuda_home),
                extra_link_args=["-fopenmp"],
            )
        ]
    return [cpp_extension.CppExtension(EXT_NAME, cpp, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])]


def _strict() -> bool:
    return os.environ.get("MULO_BUILD_EXT", "auto") == "1"


def _warn(e: BaseException) -> None:
    bar = "=" * 100
    print(
        f"\n{bar}\nmulo: WARNING: building the native extension mulo._C failed ({type(e).__name__}: {e}).\n"
        "mulo is installed without it: backend='reference' (and 'triton') work, backend='cpu'/'cuda' will raise.\n"
        "Fix the toolchain (a C++20 compiler with OpenMP; nvcc for CUDA) and re-run `make install`, or set\n"
        f"MULO_BUILD_EXT=1 to make this failure fatal and see the full log.\n{bar}\n",
        file=sys.stderr,
    )


def cmdclass() -> dict:
    """``build_ext`` = torch's BuildExtension (ninja, ``MAX_JOBS`` parallel jobs) that tolerates failure."""
    try:
        from torch.utils.cpp_extension import BuildExtension
    except ImportError:
        return {}

    class TolerantBuildExt(BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)):
        def run(self):
            os.environ.setdefault("MAX_JOBS", str(max(1, min(os.cpu_count() or 1, 4))))
            try:
                super().run()
            except Exception as e:  # noqa: BLE001 - any build failure is reported the same way
                if _strict():
                    raise
                _warn(e)

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as e:  # noqa: BLE001
                if _strict():
                    raise
                _warn(e)

    return {"build_ext": TolerantBuildExt}
