"""Builds the Cython extensions in ext/ into the hoopfast package.

The Rust core (rust/) is a separate maturin-built distribution, hoopfast-core;
`make install` builds both.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [
            Extension("hoopfast.core._cpump", ["ext/_cpump.pyx"], extra_compile_args=["-O3"]),
            # The session log hashes with libcrypto's SHA-256 and frames with
            # zlib's CRC-32 (Debian: libssl-dev, zlib1g-dev; make system-deps).
            Extension(
                "hoopfast.core._ctrail",
                ["ext/_ctrail.pyx"],
                extra_compile_args=["-O3"],
                libraries=["crypto", "z"],
                define_macros=[("OPENSSL_SUPPRESS_DEPRECATED", None)],
            ),
        ],
        compiler_directives={"language_level": "3"},
        quiet=True,
    ),
)
