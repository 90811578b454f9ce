"""Build of the native core.

The Cython sources live in src/_native/ and compile into modules of the
``pacsstore`` package. ``PACSSTORE_SANITIZE=1`` builds them with
AddressSanitizer and UBSan (run the tests with the matching
``LD_PRELOAD`` of libasan); ``PACSSTORE_DEBUG=1`` builds without
optimisation and with Cython's bounds checks on.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

NATIVE_MODULES = {
    "pacsstore._parse": "src/_native/parse.pyx",
    "pacsstore._filters": "src/_native/filters.pyx",
    "pacsstore._assemble": "src/_native/assemble.pyx",
    "pacsstore._digests": "src/_native/digests.pyx",
}
# System libraries each module links, besides zlib: the filters encode
# planes16 blocks with libzstd, the file assembly decodes them with it and
# hashes them with OpenSSL's libcrypto, as the digests module does its
# batches (scripts/setup.sh installs their headers).
LIBRARIES = {"pacsstore._filters": ["zstd"],
             "pacsstore._assemble": ["zstd", "crypto"],
             "pacsstore._digests": ["crypto"]}


def _compile_flags() -> tuple[list[str], list[str]]:
    if os.environ.get("PACSSTORE_SANITIZE") == "1":
        flags = ["-O1", "-g", "-fno-omit-frame-pointer",
                 "-fsanitize=address,undefined"]
        return flags, ["-fsanitize=address,undefined"]
    if os.environ.get("PACSSTORE_DEBUG") == "1":
        return ["-O0", "-g"], []
    return ["-O3"], []


def _extensions() -> list[Extension]:
    cflags, ldflags = _compile_flags()
    return [
        Extension(name, [source], extra_compile_args=cflags,
                  extra_link_args=ldflags,
                  libraries=["z", *LIBRARIES.get(name, [])])
        for name, source in NATIVE_MODULES.items()
    ]


debug = os.environ.get("PACSSTORE_DEBUG") == "1"
setup(
    ext_modules=cythonize(
        _extensions(),
        language_level=3,
        compiler_directives={
            "boundscheck": debug,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": debug,
        },
    ),
)
