"""Build of the optional C extension ``pycita._native`` (everything else is in pyproject.toml).

The extension holds the per-item hot loops of snapshot export and restore
(keccak, strict RLP decoding, the bulk trie builder and the trie walker);
every function in it has a pure-Python reference that pycita falls back to
when the extension is missing (``optional=True``: a machine without a C
compiler still installs pycita, only slower; ``pycita.native.AVAILABLE``
tells, and the test suite requires it).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pycita._native",
            sources=["pycita/_native.c"],
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
            optional=True,
        )
    ]
)
