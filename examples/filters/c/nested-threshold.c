/* A numeric threshold on a nested data field: players past level 10. Its JavaScript twin is
 * examples/filters/nested-threshold.js; as there, only a JSON number counts. */
#include "rtcrm_filter.h"

#define MIN_LEVEL 10.0

static int nested_threshold(rtcrm_event event) {
    double level;
    return rtcrm_get_number(event, "data.player.level", &level) && level > MIN_LEVEL;
}

RTCRM_FILTER(nested_threshold)
