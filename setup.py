"""Builds reidfast._C: the CPU kernels always, the CUDA kernels whenever nvcc and a CUDA build of torch exist.

Environment:
  REIDFAST_CUDA=0|1      0 skips the CUDA kernels; 1 makes their absence an error; unset builds them when possible.
  CUDA_HOME              defaults to /usr/local/cuda when unset and present (a wrapper nvcc on PATH misleads torch).
  TORCH_CUDA_ARCH_LIST   defaults to the visible GPU's arch, else "8.0;9.0" (A100, H100/H200; 8.x GPUs run 8.0).
  MAX_JOBS               parallel compile jobs (ninja).
`python setup.py --print-sources-hash` prints the digest of the sources that a build records (reidfast._C.sources_hash).
"""
import glob
import os
import sys

# CUDA_HOME must be settled before torch.utils.cpp_extension is imported: it reads the variable at import time.
_DEFAULT_CUDA_HOME = "/usr/local/cuda"
if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH") and os.path.isdir(_DEFAULT_CUDA_HOME):
    os.environ["CUDA_HOME"] = _DEFAULT_CUDA_HOME

import torch  # noqa: E402
from setuptools import find_packages, setup  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


def log(msg):
    print(f"[reidfast build] {msg}", flush=True)


def want_cuda():
    flag = os.environ.get("REIDFAST_CUDA", "").strip()
    if flag not in ("", "0", "1"):
        sys.exit(f"REIDFAST_CUDA must be 0, 1 or unset, got {flag!r}")
    missing = []
    if torch.version.cuda is None:
        missing.append(f"torch {torch.__version__} is a CPU-only build")
    if CUDA_HOME is None or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        missing.append(f"no nvcc under CUDA_HOME={CUDA_HOME!r}")
    if flag == "0":
        log("CUDA kernels: skipped (REIDFAST_CUDA=0)")
        return False
    if missing:
        if flag == "1":
            sys.exit("REIDFAST_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(missing))
        log("CUDA kernels: skipped (" + "; ".join(missing) + ")")
        return False
    return True


def cuda_arch_list():
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    return os.environ["TORCH_CUDA_ARCH_LIST"]


GENERATED = os.path.join(ROOT, "csrc", "generated")


def sources_hash():
    """A digest of everything the extension is compiled from (csrc/ but its generated header, and this file)."""
    import hashlib

    digest = hashlib.sha256()
    paths = sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*"), recursive=True)) + [os.path.abspath(__file__)]
    for path in paths:
        if os.path.isfile(path) and not path.startswith(GENERATED + os.sep):
            digest.update(os.path.relpath(path, ROOT).encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:16]


def write_build_info():
    """csrc/generated/reidfast_build_info.h: the torch the extension is compiled against and sources_hash(), which
    reidfast._C exposes (torch_version, sources_hash) so that scripts/gpu_check.sh reuses a build carried to the GPU
    machine only when both match. A header that only python_module.cpp includes, rewritten only when it changes:
    a define on the command line would make every edit rebuild every file."""
    text = (f'#define REIDFAST_TORCH_VERSION "{torch.__version__}"\n'
            f'#define REIDFAST_SOURCES_HASH "{sources_hash()}"\n')
    path = os.path.join(GENERATED, "reidfast_build_info.h")
    if os.path.exists(path):
        with open(path) as f:
            if f.read() == text:
                return
    os.makedirs(GENERATED, exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def extensions():
    sources = (["csrc/ops.cpp", "csrc/python_module.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
               + sorted(glob.glob("csrc/autograd/*.cpp")))
    # The C++ standard comes from torch (C++17 before 2.13, C++20 after). -fno-trapping-math lets GCC turn the
    # kernels' comparisons into vector selects (nothing here reads floating-point exception flags).
    cxx = ["-O3", "-fopenmp", "-fno-trapping-math"]
    define = []
    write_build_info()
    include_dirs = [os.path.join(ROOT, "csrc", "include"), GENERATED]
    if want_cuda():
        archs = cuda_arch_list()
        log(f"CUDA kernels: building with CUDA_HOME={CUDA_HOME}, TORCH_CUDA_ARCH_LIST={archs}")
        define += [("REIDFAST_WITH_CUDA", None), ("REIDFAST_CUDA_ARCHS", f'"{archs}"')]
        return [
            CUDAExtension(
                "reidfast._C",
                sources + sorted(glob.glob("csrc/cuda/*.cu")),
                include_dirs=include_dirs,
                define_macros=define,
                extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]},
                extra_link_args=["-fopenmp"],
            )
        ]
    return [
        CppExtension(
            "reidfast._C", sources, include_dirs=include_dirs, define_macros=define,
            extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"],
        )
    ]


if sys.argv[1:] == ["--print-sources-hash"]:
    print(sources_hash())
    sys.exit(0)

setup(
    name="reidfast",
    version="0.1.0",
    license="BSD-3-Clause",  # declared dynamic in pyproject.toml
    packages=find_packages(include=["reidfast", "reidfast.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
