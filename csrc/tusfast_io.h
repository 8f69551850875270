/*
 * tusfast_io.h - the small set of blocking file-I/O primitives tusfast needs
 * in C: complete positional writes and page-cache control.
 *
 * Conventions: every function returns >= 0 on success or -errno on failure.
 * There is no policy here (which errors to ignore is decided in Python, see
 * tusfast/nativeio.py) and nothing is allocated.  An offset of -1 means "the
 * current file position" (write/writev instead of pwrite/pwritev), so pipes
 * and sockets, which reject pwrite with ESPIPE, can use the same loops.
 */
#ifndef TUSFAST_IO_H
#define TUSFAST_IO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

/* Write all len bytes of buf at offset, retrying short writes and EINTR; returns len. */
ssize_t tf_pwrite_all(int fd, const char *buf, size_t len, int64_t offset);

/* Write iov[0..iovcnt) back to back from offset, IOV_MAX entries per syscall, retrying short writes and EINTR; advances (modifies) iov; returns the total. */
ssize_t tf_pwritev_all(int fd, struct iovec *iov, int iovcnt, int64_t offset);

/* fdatasync(fd), retrying EINTR; returns 0. */
int tf_fdatasync(int fd);

/* Start write-back of [offset, offset+length) and drop the preceding length bytes from the page cache; returns 0 or the first error. */
int tf_write_back(int fd, int64_t offset, int64_t length);

#endif /* TUSFAST_IO_H */
