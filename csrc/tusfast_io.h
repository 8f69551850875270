/*
 * tusfast_io.h - the small set of blocking file-I/O primitives tusfast needs
 * in C: complete positional writes, page-cache control and in-kernel copies
 * (file to file, file to socket).
 *
 * Conventions: every function returns >= 0 on success or -errno on failure.
 * There is no policy here (which errors to ignore is decided in Python, see
 * tusfast/nativeio.py) and nothing is allocated (a tf_writer's memory belongs
 * to the caller).  An offset of -1 means "the
 * current file position" (write/writev instead of pwrite/pwritev), so pipes
 * and sockets, which reject pwrite with ESPIPE, can use the same loops.
 */
#ifndef TUSFAST_IO_H
#define TUSFAST_IO_H

#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
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

/* Copy len bytes from src_fd at src_off to dst_fd at dst_off with copy_file_range (reflinks where the file system can), retrying short copies and EINTR;
 * offsets must be >= 0 and neither file position moves.  Returns the total, less than len if the source ends first.  An error after some bytes were
 * copied returns that count, so the error is only reported (as -errno) by a call that copies nothing: calling again from the returned position tells
 * end of file (0) from an error.  -ENOSYS, -EXDEV, -EINVAL, -EOPNOTSUPP, ... mean "no in-kernel copy here"; the caller falls back to read/write. */
int64_t tf_copy_range(int src_fd, int64_t src_off, int dst_fd, int64_t dst_off, int64_t len);

/* One sendfile of up to count bytes of in_fd at offset (-1: its file position, which then advances) to out_fd, retrying EINTR only;
 * returns the bytes sent (0 at end of file), or -EAGAIN if out_fd is non-blocking and full. */
int64_t tf_sendfile(int out_fd, int in_fd, int64_t offset, int64_t count);

/* Move up to count bytes from the (non-blocking) socket sock into file at offset through the pipe
 * pipe_r/pipe_w, without copying them through user space: splice socket -> pipe, then pipe -> file
 * until the pipe is empty again; repeat until count bytes moved or the socket has nothing more.
 * Returns the bytes stored in the file (> 0), 0 at end of stream, -EAGAIN if the socket had nothing,
 * or -errno. After an error storing into the file, the pipe may hold bytes: discard it, and learn
 * from the file's size what was stored. */
int64_t tf_splice_to_file(int sock, int pipe_r, int pipe_w, int file, int64_t offset, int64_t count);

/* A helper thread that runs one tf_pwrite_all at a time, so that its owner can go on (read the
 * next buffer) while the device takes the previous one; it never touches Python, so it never
 * waits for the GIL.  The fields are private: use the functions.  Start a write only when none
 * is in flight, keep its buffer alive until tf_writer_wait returns, and stop the thread with
 * tf_writer_close before freeing the struct. */
typedef struct tf_writer {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int state;              /* TF_WRITER_IDLE, _BUSY (a job waits or runs), _DONE, _CLOSING */
    int fd;
    const char *buf;
    size_t len;
    int64_t offset;
    ssize_t result;
} tf_writer;

/* Start the thread; returns 0 or -errno (then nothing needs closing). */
int tf_writer_init(tf_writer *w);

/* Hand the thread tf_pwrite_all(fd, buf, len, offset); returns 0, or -EBUSY if a write is in flight
 * or not yet waited for. */
int tf_writer_start(tf_writer *w, int fd, const char *buf, size_t len, int64_t offset);

/* Wait for the started write; returns its tf_pwrite_all result, or -EINVAL if none was started. */
ssize_t tf_writer_wait(tf_writer *w);

/* Wait for a write in flight, stop the thread and release its resources; returns 0. */
int tf_writer_close(tf_writer *w);

#endif /* TUSFAST_IO_H */
