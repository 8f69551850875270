"""cffi API-mode builder for tusfast._native (run by setuptools via setup.py).

Paths are relative to the project root because setuptools runs this from there.
Set TUSFAST_WERROR=1 (CI does) to turn compiler warnings into errors; it is off
for end users because a newer compiler or cffi must not break their install.
"""

import os

from cffi import FFI

CDEF = """
struct iovec {
    void *iov_base;
    size_t iov_len;
    ...;
};

ssize_t tf_pwrite_all(int fd, const char *buf, size_t len, int64_t offset);
ssize_t tf_pwritev_all(int fd, struct iovec *iov, int iovcnt, int64_t offset);
int tf_fdatasync(int fd);
int tf_write_back(int fd, int64_t offset, int64_t length);
int64_t tf_copy_range(int src_fd, int64_t src_off, int dst_fd, int64_t dst_off, int64_t len);
int64_t tf_sendfile(int out_fd, int in_fd, int64_t offset, int64_t count);
int64_t tf_splice_to_file(int sock, int pipe_r, int pipe_w, int file, int64_t offset, int64_t count);

typedef struct tf_writer { ...; } tf_writer;
int tf_writer_init(tf_writer *w);
int tf_writer_start(tf_writer *w, int fd, const char *buf, size_t len, int64_t offset);
ssize_t tf_writer_wait(tf_writer *w);
int tf_writer_close(tf_writer *w);
"""

CFLAGS = ["-O2", "-Wall", "-Wextra"]
if os.environ.get("TUSFAST_WERROR", "") not in ("", "0"):
    CFLAGS.append("-Werror")

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "tusfast._native",
    '#include "tusfast_io.h"',
    sources=["csrc/tusfast_io.c"],
    include_dirs=["csrc"],
    depends=["csrc/tusfast_io.h"],
    extra_compile_args=CFLAGS,
    libraries=["pthread"],
)

if __name__ == "__main__":
    # From the project root: builds tusfast/_native*.so in place for development.
    ffibuilder.compile(tmpdir=".", verbose=True)
