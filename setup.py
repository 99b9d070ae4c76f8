"""babylm-ds: builds the `babylm_ds._C` extension (CPU kernels always; CUDA kernels when torch
has CUDA and nvcc is found).

Environment switches:
  BABYLM_DS_CUDA=1   force the CUDA kernels (fail if they cannot be built)
  BABYLM_DS_CUDA=0   skip the CUDA kernels
  BABYLM_DS_NO_EXT=1 build no extension at all (pure-Python install; the torch backend is used)
  TORCH_CUDA_ARCH_LIST defaults to "8.0;9.0"
"""
import glob
import os
import platform

from setuptools import find_packages, setup

ext_modules, cmdclass = [], {}
if os.environ.get("BABYLM_DS_NO_EXT") != "1":
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    want = os.environ.get("BABYLM_DS_CUDA")
    use_cuda = want == "1" or (want != "0" and torch.version.cuda is not None and CUDA_HOME is not None)
    sources = sorted(glob.glob("csrc/*.cpp"))
    # -fno-trapping-math: GCC 12 if-converts float selects (the clamps of the CPU kernels' exp) only without
    # it, so that those loops vectorise on AVX2 and x86-64-v2 too; it changes no value. x86-64-v2 is the
    # baseline CPU kernels' instruction set (hgrn2_cpu.cpp adds AVX2 and AVX-512 copies).
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    cxx = ["-O3", "-fopenmp", "-fno-trapping-math"] + (["-march=x86-64-v2"] if x86 else [])
    if os.name == "nt":
        cxx = ["/O2", "/openmp"]
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        ext = CUDAExtension(
            "babylm_ds._C",
            sources + sorted(glob.glob("csrc/*.cu")),
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = CppExtension("babylm_ds._C", sources, extra_compile_args=cxx, extra_link_args=["-fopenmp"])
    ext_modules = [ext]
    cmdclass = {"build_ext": BuildExtension.with_options(use_ninja=True)}

setup(
    name="babylm-ds",
    version="0.1.0",
    description="DeepSpeed-scaled sample-efficient LM pretraining with teacher-student distillation",
    packages=find_packages(include=["babylm_ds", "babylm_ds.*"]),
    package_data={"babylm_ds.evaluation": ["lm_eval_tasks/*"]},
    python_requires=">=3.10",
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    # hgrn2(backend="fla"): fla's chunk_gla on GPUs (also first in `auto` there)
    extras_require={"fla": ["flash-linear-attention==0.6.0"]},
    entry_points={"console_scripts": ["babylm-ds=babylm_ds.cli:main"]},
)
