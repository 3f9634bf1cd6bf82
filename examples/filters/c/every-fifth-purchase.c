/* Every fifth purchase of a player triggers: a filter of the player's state (filter ABI version 2),
 * for a campaign with "state": {"ttl": "30d", "max_bytes": 256}. Other events leave the state as
 * it was. Its JavaScript twin is examples/filters/every-fifth-purchase.js; the native test is
 * examples/filters/c/tests/every-fifth-purchase.test.c. */
#include <stdio.h>

#include "rtcrm_filter.h"

static int every_fifth_purchase(rtcrm_event event, rtcrm_state *state) {
    double stored = 0;
    char json[48];
    if (!rtcrm_string_eq(event, "event_name", "purchase")) return RTCRM_NO_MATCH;
    rtcrm_get_number(state->stored, "purchases", &stored); /* absent (the first purchase): 0 */
    long purchases = (long)stored + 1;
    int len = snprintf(json, sizeof json, "{\"purchases\":%ld}", purchases);
    if (len < 0 || (size_t)len >= sizeof json || rtcrm_state_set(state, json, (size_t)len) != 0) return RTCRM_FILTER_ERROR;
    return purchases % 5 == 0 ? RTCRM_MATCH : RTCRM_NO_MATCH;
}

RTCRM_FILTER_STATE(every_fifth_purchase)
