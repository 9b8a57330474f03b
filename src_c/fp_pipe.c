/* Pipes and copy buffers, lent to a connection's direction only while bytes are in flight.
 *
 * Each worker owns a pool of pipes capped at pool_cap (pooled + lent): an idle connection holds no
 * pipe. A pipe returned empty goes back to the pool; one that still holds bytes (its connection
 * died mid-flight) is closed, never recycled. When no pipe can be had, the direction copies
 * through a buffer from a small per-worker cache instead (counted as a splice fallback).
 * Syscalls: pipe2, fcntl(F_SETPIPE_SZ/F_GETPIPE_SZ), close.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "fp_internal.h"

#define FP_BUF_CACHE 64

/* Contract: allocates the pool arrays for up to `cap` pipes. Returns 0 or -ENOMEM. */
int fp_pool_init(struct fp_worker *w, int cap)
{
    w->pool_cap = cap < 0 ? 0 : cap;
    w->pooled = w->lent = 0;
    w->pool = calloc((size_t)(w->pool_cap ? w->pool_cap : 1) * 2, sizeof(int));
    w->pool_caps = calloc((size_t)(w->pool_cap ? w->pool_cap : 1), sizeof(uint32_t));
    w->bufs = calloc(FP_BUF_CACHE, sizeof(uint8_t *));
    w->nbufs = 0;
    if (!w->pool || !w->pool_caps || !w->bufs)
        return -ENOMEM;
    return 0;
}

static void close_pipe(struct fp_worker *w, int r, int wr)
{
    close(r);
    close(wr);
    FP_DBG_ADD(w->st.debug_live_pipes, -1);
}

/* Contract: closes every pooled pipe and cached buffer and frees the arrays. Lent pipes must
 * have been returned first. */
void fp_pool_destroy(struct fp_worker *w)
{
    if (w->pool) {
        for (int i = 0; i < w->pooled; i++)
            close_pipe(w, w->pool[2 * i], w->pool[2 * i + 1]);
    }
    FP_SUB(w->st.pipes_pooled, (uint64_t)w->pooled);
    w->pooled = 0;
    free(w->pool);
    free(w->pool_caps);
    w->pool = NULL;
    w->pool_caps = NULL;
    if (w->bufs) {
        for (int i = 0; i < w->nbufs; i++)
            free(w->bufs[i]);
        free(w->bufs);
        w->bufs = NULL;
    }
    w->nbufs = 0;
}

/* Contract: gives `d` a pipe from the pool, or a new one while the cap allows. Returns 0, or
 * -EAGAIN when the cap is reached, or a negative errno from pipe2. The pipe is non-blocking and
 * as large as opts.pipe_size allows (the kernel may refuse: the per-user pipe budget). */
int fp_pipe_borrow(struct fp_worker *w, struct fp_dir *d)
{
    if (w->pooled > 0) {
        w->pooled--;
        d->pipe_r = w->pool[2 * w->pooled];
        d->pipe_w = w->pool[2 * w->pooled + 1];
        d->pipe_cap = w->pool_caps[w->pooled];
        FP_SUB(w->st.pipes_pooled, 1);
    } else {
        if (w->lent >= w->pool_cap)
            return -EAGAIN;
        int p[2];
        if (pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0)
            return -errno;
        int want = w->e->o.pipe_size;
        if (want > 0)
            (void)fcntl(p[1], F_SETPIPE_SZ, want); /* refused past the budget: keep default */
        int cap = fcntl(p[1], F_GETPIPE_SZ);
        d->pipe_r = p[0];
        d->pipe_w = p[1];
        d->pipe_cap = cap > 0 ? (uint32_t)cap : 65536u;
        FP_ADD(w->st.pipes_created, 1);
        FP_DBG_ADD(w->st.debug_live_pipes, 1);
    }
    w->lent++;
    d->in_pipe = 0;
    d->pipe_full = 0;
    FP_ADD(w->st.pipes_in_use, 1);
    return 0;
}

/* Contract: takes the pipe back from `d` (no-op when it has none). An empty pipe returns to the
 * pool; a pipe still holding bytes is closed. */
void fp_pipe_return(struct fp_worker *w, struct fp_dir *d)
{
    if (d->pipe_r < 0)
        return;
    w->lent--;
    FP_SUB(w->st.pipes_in_use, 1);
    if (d->in_pipe == 0 && w->pooled < w->pool_cap) {
        w->pool[2 * w->pooled] = d->pipe_r;
        w->pool[2 * w->pooled + 1] = d->pipe_w;
        w->pool_caps[w->pooled] = d->pipe_cap;
        w->pooled++;
        FP_ADD(w->st.pipes_pooled, 1);
    } else {
        close_pipe(w, d->pipe_r, d->pipe_w);
    }
    d->pipe_r = d->pipe_w = -1;
    d->in_pipe = 0;
    d->pipe_full = 0;
    d->pipe_cap = 0;
}

/* Contract: gives `d` a copy buffer of opts.copy_buf_size bytes. Returns 0 or -ENOMEM. */
int fp_buf_borrow(struct fp_worker *w, struct fp_dir *d)
{
    if (w->nbufs > 0) {
        d->buf = w->bufs[--w->nbufs];
    } else {
        d->buf = malloc((size_t)w->e->o.copy_buf_size);
        if (!d->buf)
            return -ENOMEM;
    }
    d->buf_off = d->buf_len = 0;
    return 0;
}

/* Contract: takes the copy buffer back from `d` (no-op when it has none); any bytes still in it
 * are dropped (only called when they are delivered or the connection is gone). */
void fp_buf_return(struct fp_worker *w, struct fp_dir *d)
{
    if (!d->buf)
        return;
    if (w->nbufs < FP_BUF_CACHE)
        w->bufs[w->nbufs++] = d->buf;
    else
        free(d->buf);
    d->buf = NULL;
    d->buf_off = d->buf_len = 0;
}
