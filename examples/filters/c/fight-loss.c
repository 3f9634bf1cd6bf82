/* The original system's campaign 4711 in C: players who lost a fight. Its JavaScript twin is
 * examples/filters/fight-loss.js. */
#include "rtcrm_filter.h"

static int fight_loss(rtcrm_event event) {
    return rtcrm_string_eq(event, "data.result", "loss");
}

RTCRM_FILTER(fight_loss)
