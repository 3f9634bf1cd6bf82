/* A filter that writes to stdout: fight-loss, printing every verdict. The output goes to the
 * host's log (rate-limited, lines cut, capped per instance), never to the host's own stdout. */
#include <stdio.h>
#include "rtcrm_filter.h"

static int chatty(rtcrm_event event) {
    char result[32];
    if (rtcrm_get_string(event, "data.result", result, sizeof result) < 0) result[0] = '\0';
    int loss = strcmp(result, "loss") == 0;
    printf("chatty-c: result=%s match=%d\n", result, loss);
    fflush(stdout);
    return loss;
}

RTCRM_FILTER(chatty)
