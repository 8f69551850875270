# Stub for the cffi extension built from csrc/build_native.py.
from typing import Any

ffi: Any
lib: Any
