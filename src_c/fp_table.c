/* The decision table: what the control plane compiled, read by every worker. Immutable once
 * installed; reference counted so a reload never pulls it from under an open connection. */
#include <errno.h>
#include <stdlib.h>

#include "fp_internal.h"

fp_table *fp_table_new(void)
{
    fp_table *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->refs = 1;
    t->default_action = FP_ACT_DENY;
    t->connect_ms = 60000;
    t->idle_ms = 60000;
    return t;
}

void fp_table_ref(fp_table *t)
{
    __atomic_add_fetch(&t->refs, 1, __ATOMIC_RELAXED);
}

void fp_table_unref(fp_table *t)
{
    if (t && __atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) == 0)
        free(t);
}

int fp_table_set_default(fp_table *t, int action)
{
    if (action != FP_ACT_DENY && action != FP_ACT_PASSTHROUGH)
        return -EINVAL;
    t->default_action = action;
    return 0;
}

int fp_table_set_timeouts(fp_table *t, int connect_ms, int idle_ms)
{
    if (connect_ms < 0 || idle_ms < 0)
        return -EINVAL;
    t->connect_ms = connect_ms;
    t->idle_ms = idle_ms;
    return 0;
}

int fp_table_decide(const fp_table *t, const struct sockaddr *dst)
{
    (void)dst; /* per-destination rules come with egress policies */
    return t->default_action;
}

/* Contract: returns a new reference to the engine's current table (never NULL once the engine
 * exists). The mutex makes load + ref atomic against fp_engine_set_table's unref. */
fp_table *fp_table_acquire(struct fp_engine *e)
{
    pthread_mutex_lock(&e->tlock);
    fp_table *t = e->table;
    fp_table_ref(t);
    pthread_mutex_unlock(&e->tlock);
    return t;
}
