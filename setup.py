from setuptools import setup

# Metadata lives in pyproject.toml; this only wires in the cffi extension.
setup(cffi_modules=["csrc/build_native.py:ffibuilder"])
