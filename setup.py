"""Build script for cnnrt: the Python package plus the Cython kernels in ext/.

Every ``ext/<name>.pyx`` (or ``ext/_<name>.pyx``, which can then have an
``ext/_<name>.pxd`` C-level API beside it) becomes the extension module
``cnnrt._<name>``, compiled with OpenMP.  Environment switches:

* ``CNNRT_DEBUG=1``     bounds checks and wraparound back on, -O0 -g.
* ``CNNRT_SANITIZE=address``  build with AddressSanitizer and UBSan.
"""
import glob
import os
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("CNNRT_DEBUG", "") not in ("", "0")
SANITIZE = os.environ.get("CNNRT_SANITIZE", "")

compile_args = ["-fopenmp", "-O0" if DEBUG else "-O3", "-fno-math-errno"]
link_args = ["-fopenmp"]
if DEBUG:
    compile_args.append("-g")
if SANITIZE:
    flags = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
    compile_args += flags
    link_args += flags

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "cdivision": True,
    "initializedcheck": DEBUG,
    "nonecheck": False,
    "embedsignature": True,
}

extensions = []
for path in sorted(glob.glob(os.path.join("ext", "*.pyx"))):
    name = os.path.splitext(os.path.basename(path))[0]
    if not name.startswith("_"):
        name = "_" + name
    extensions.append(
        Extension(
            "cnnrt." + name,
            [path],
            include_dirs=[np.get_include(), "ext"],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
    )


def read_version():
    with open(os.path.join(HERE, "cnnrt", "_version.py")) as fh:
        scope = {}
        exec(fh.read(), scope)
        return scope["__version__"]


TEST = ["pytest>=7", "hypothesis>=6"]
EXTRAS = {
    "convert": ["onnx"],                                   # from_onnx, to_onnx, cnnrt-convert
    "train": ["scikit-learn", "tqdm", "matplotlib"],       # digits dataset, progress, --plot
    "serve": ["starlette", "uvicorn", "python-multipart"],  # cnnrt.serve, cnnrt-serve
    "dask": ["dask[distributed]"],                         # cnnrt.dask
}
EXTRAS["all"] = sorted({dep for deps in EXTRAS.values() for dep in deps})
# The tests compare against the source frameworks, so they install them too
# (torch pinned: an unpinned torch pulls a multi-GB GPU build).
EXTRAS["test"] = sorted(set(TEST) | set(EXTRAS["all"])
                        | {"onnxruntime", "torch==2.13.0", "keras", "httpx"})

setup(
    name="cnnrt",
    version=read_version(),
    description="A CNN inference runtime for Python: HDF5 model files, Cython nogil kernels",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["cnnrt", "cnnrt.*"]),
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        include_path=["ext"],
        quiet=True,
    ),
    install_requires=["numpy>=1.23", "h5py>=3.0", "Pillow>=9.0"],
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "cnnrt-run=cnnrt.cli:main_run",
            "cnnrt-inspect=cnnrt.cli:main_inspect",
            "cnnrt-train=cnnrt.train.cli:main",
            "cnnrt-convert=cnnrt.convert.cli:main",
            "cnnrt-serve=cnnrt.serve.cli:main",
        ]
    },
    zip_safe=False,
)
