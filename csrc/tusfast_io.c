/* Must precede every system header: sync_file_range and copy_file_range
 * (glibc >= 2.27) are GNU extensions and off_t has to be 64 bits on 32-bit
 * platforms too. */
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64

#include "tusfast_io.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/sendfile.h>
#include <unistd.h>

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

/* Retrying a write that made no progress would spin forever; no regular
 * file, pipe or socket does that for a non-empty buffer, so report it. */
#define TF_NO_PROGRESS EIO

static ssize_t write_at(int fd, const char *buf, size_t len, int64_t offset)
{
    if (offset < 0)
        return write(fd, buf, len);
    return pwrite(fd, buf, len, (off_t)offset);
}

ssize_t tf_pwrite_all(int fd, const char *buf, size_t len, int64_t offset)
{
    size_t done = 0;

    if (offset < -1 || len > SSIZE_MAX)
        return -EINVAL;
    while (done < len) {
        ssize_t n = write_at(fd, buf + done, len - done,
                             offset < 0 ? -1 : offset + (int64_t)done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -TF_NO_PROGRESS;
        done += (size_t)n;
    }
    return (ssize_t)done;
}

static ssize_t writev_at(int fd, const struct iovec *iov, int iovcnt, int64_t offset)
{
    if (offset < 0)
        return writev(fd, iov, iovcnt);
    return pwritev(fd, iov, iovcnt, (off_t)offset);
}

ssize_t tf_pwritev_all(int fd, struct iovec *iov, int iovcnt, int64_t offset)
{
    size_t done = 0;

    if (offset < -1 || iovcnt < 0)
        return -EINVAL;
    while (iovcnt > 0) {
        /* Leading empty buffers are skipped so a 0 return always means "stuck". */
        if (iov->iov_len == 0) {
            iov++;
            iovcnt--;
            continue;
        }
        ssize_t n = writev_at(fd, iov, iovcnt < IOV_MAX ? iovcnt : IOV_MAX,
                              offset < 0 ? -1 : offset + (int64_t)done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -TF_NO_PROGRESS;
        done += (size_t)n;
        size_t left = (size_t)n;
        while (left > 0 && left >= iov->iov_len) {
            left -= iov->iov_len;
            iov++;
            iovcnt--;
        }
        /* A short write can stop in the middle of a buffer. */
        if (left > 0) {
            iov->iov_base = (char *)iov->iov_base + left;
            iov->iov_len -= left;
        }
    }
    return (ssize_t)done;
}

int tf_fdatasync(int fd)
{
    while (fdatasync(fd) != 0) {
        if (errno != EINTR)
            return -errno;
    }
    return 0;
}

int tf_write_back(int fd, int64_t offset, int64_t length)
{
    int rc = 0;

    /* length 0 would mean "to the end of the file" to both syscalls. */
    if (offset < 0 || length < 0)
        return -EINVAL;
    if (length == 0)
        return 0;
#ifdef SYNC_FILE_RANGE_WRITE
    /* Wait for the previous range (queued one call ago) so that at most two
     * ranges are dirty: the caller writes at disk speed instead of filling
     * the page cache. Then queue this range without waiting. */
    if (offset > 0) {
        int64_t start = offset > length ? offset - length : 0;
        if (sync_file_range(fd, start, offset - start, SYNC_FILE_RANGE_WAIT_BEFORE |
                            SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER) != 0)
            rc = -errno;
    }
    if (sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE) != 0 && rc == 0)
        rc = -errno;
#else
    rc = -ENOSYS;
#endif
#ifdef POSIX_FADV_DONTNEED
    /* The previous range is clean now: drop it from the page cache. */
    if (offset > 0) {
        int64_t start = offset > length ? offset - length : 0;
        int err = posix_fadvise(fd, start, offset - start, POSIX_FADV_DONTNEED);
        if (err != 0 && rc == 0)
            rc = -err;
    }
#endif
    return rc;
}

int64_t tf_copy_range(int src_fd, int64_t src_off, int dst_fd, int64_t dst_off, int64_t len)
{
    int64_t done = 0;

    if (src_off < 0 || dst_off < 0 || len < 0)
        return -EINVAL;
    while (done < len) {
        /* copy_file_range advances these, but the loop recomputes them so a
         * failed call cannot leave them half-updated. */
        off_t in = (off_t)(src_off + done), out = (off_t)(dst_off + done);
        int64_t left = len - done;
        ssize_t n = copy_file_range(src_fd, &in, dst_fd, &out,
                                    left < (int64_t)SSIZE_MAX ? (size_t)left : (size_t)SSIZE_MAX, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            /* Report the progress; the next call, which copies nothing, reports the error. */
            return done > 0 ? done : -errno;
        }
        if (n == 0)
            break; /* end of the source */
        done += n;
    }
    return done;
}

int64_t tf_sendfile(int out_fd, int in_fd, int64_t offset, int64_t count)
{
    off_t off = (off_t)offset;
    ssize_t n;

    if (offset < -1 || count < 0)
        return -EINVAL;
    /* Like the zero-length writes above: no syscall, so no error either. */
    if (count == 0)
        return 0;
    do {
        n = sendfile(out_fd, in_fd, offset < 0 ? NULL : &off,
                     count < (int64_t)SSIZE_MAX ? (size_t)count : (size_t)SSIZE_MAX);
    } while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

/* Empty the pipe (holding `held` bytes) into file at offset; returns 0 or -errno. */
static int64_t drain_pipe(int pipe_r, int file, int64_t offset, int64_t held)
{
    while (held > 0) {
        loff_t at = (loff_t)offset;
        ssize_t n = splice(pipe_r, NULL, file, &at, (size_t)held, SPLICE_F_MOVE);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO;
        offset += n;
        held -= n;
    }
    return 0;
}

int64_t tf_splice_to_file(int sock, int pipe_r, int pipe_w, int file, int64_t offset, int64_t count)
{
    int64_t moved = 0;

    if (offset < 0 || count < 0)
        return -EINVAL;
    while (moved < count) {
        ssize_t n = splice(sock, NULL, pipe_w, NULL, (size_t)(count - moved),
                           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return moved > 0 ? moved : -errno;
        }
        if (n == 0)
            break;  /* end of stream */
        int64_t rc = drain_pipe(pipe_r, file, offset + moved, n);
        if (rc < 0)
            return rc;  /* the pipe may still hold bytes; the file size tells what was stored */
        moved += n;
    }
    return moved;
}


/* --- tf_writer: one write at a time in a helper thread ------------------------------------- */

enum { TF_WRITER_IDLE, TF_WRITER_BUSY, TF_WRITER_DONE, TF_WRITER_CLOSING };

/* Called with the lock held: every change of state may be what a waiter waits for. */
static void writer_become(tf_writer *w, int state)
{
    w->state = state;
    pthread_cond_broadcast(&w->changed);
}

static void *writer_main(void *arg)
{
    tf_writer *w = arg;

    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (w->state != TF_WRITER_BUSY && w->state != TF_WRITER_CLOSING)
            pthread_cond_wait(&w->changed, &w->lock);
        if (w->state == TF_WRITER_CLOSING)
            break;
        pthread_mutex_unlock(&w->lock);
        ssize_t result = tf_pwrite_all(w->fd, w->buf, w->len, w->offset);
        pthread_mutex_lock(&w->lock);
        w->result = result;
        writer_become(w, TF_WRITER_DONE);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

int tf_writer_init(tf_writer *w)
{
    int rc;

    w->state = TF_WRITER_IDLE;
    w->result = 0;
    if ((rc = pthread_mutex_init(&w->lock, NULL)) != 0)
        return -rc;
    if ((rc = pthread_cond_init(&w->changed, NULL)) != 0) {
        pthread_mutex_destroy(&w->lock);
        return -rc;
    }
    if ((rc = pthread_create(&w->thread, NULL, writer_main, w)) != 0) {
        pthread_cond_destroy(&w->changed);
        pthread_mutex_destroy(&w->lock);
        return -rc;
    }
    return 0;
}

int tf_writer_start(tf_writer *w, int fd, const char *buf, size_t len, int64_t offset)
{
    int rc = 0;

    pthread_mutex_lock(&w->lock);
    if (w->state == TF_WRITER_IDLE) {
        w->fd = fd;
        w->buf = buf;
        w->len = len;
        w->offset = offset;
        writer_become(w, TF_WRITER_BUSY);
    } else {
        rc = -EBUSY;
    }
    pthread_mutex_unlock(&w->lock);
    return rc;
}

ssize_t tf_writer_wait(tf_writer *w)
{
    ssize_t result;

    pthread_mutex_lock(&w->lock);
    while (w->state == TF_WRITER_BUSY)
        pthread_cond_wait(&w->changed, &w->lock);
    if (w->state == TF_WRITER_DONE) {
        result = w->result;
        w->state = TF_WRITER_IDLE;
    } else {
        result = -EINVAL;
    }
    pthread_mutex_unlock(&w->lock);
    return result;
}

int tf_writer_close(tf_writer *w)
{
    pthread_mutex_lock(&w->lock);
    while (w->state == TF_WRITER_BUSY)
        pthread_cond_wait(&w->changed, &w->lock);
    writer_become(w, TF_WRITER_CLOSING);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->changed);
    pthread_mutex_destroy(&w->lock);
    return 0;
}
