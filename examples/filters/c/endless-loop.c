/* A filter that misbehaves: it never returns. The host stops it when the evaluation's fuel runs
 * out (error kind `fuel`), counts no match, rebuilds the instance and keeps running. */
#include "rtcrm_filter.h"

static int endless_loop(rtcrm_event event) {
    /* volatile: an infinite loop without side effects would be undefined behaviour in C. */
    volatile unsigned long rounds = 0;
    while (rtcrm_get(event, "data.never").type == RTCRM_MISSING) rounds++;
    return RTCRM_NO_MATCH;
}

RTCRM_FILTER(endless_loop)
