/* The native unit test of examples/filters/c/every-fifth-purchase.c, with any C compiler:
 *   cc -Wall -Wextra -Werror -I filter-sdk/c -o t examples/filters/c/tests/every-fifth-purchase.test.c && ./t examples/filters/purchases.jsonl
 * Threads one player's state through the events as the host does and checks the verdicts and the
 * final state. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../every-fifth-purchase.c"

static int failures;

static void expect(int ok, const char *what) {
    if (!ok) {
        failures++;
        printf("FAIL %s\n", what);
    }
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "purchases.jsonl";
    FILE *f = fopen(path, "r");
    if (!f) { perror(path); return 2; }
    static char line[1 << 16];
    char state[256] = "{}";
    char verdicts[64] = "";
    while (fgets(line, sizeof line, f)) {
        size_t len = strlen(line);
        if (len < 2) continue;
        int status = rtcrm_eval_state(every_fifth_purchase, line, len, state, sizeof state);
        strcat(verdicts, status == RTCRM_MATCH ? "1" : status == RTCRM_NO_MATCH ? "0" : "E");
    }
    fclose(f);
    /* purchase purchase login purchase purchase purchase fight purchase x4 login purchase x3 */
    expect(strcmp(verdicts, "000001000000100") == 0, "verdicts over the table");
    expect(strcmp(state, "{\"purchases\":12}") == 0, "final state");
    printf("verdicts %s, final state %s\n", verdicts, state);

    /* Other events leave the state as it was; the count continues from the stored state. */
    char s[64] = "{\"purchases\":4}";
    const char *login = "{\"event_name\":\"login\"}", *purchase = "{\"event_name\":\"purchase\"}";
    expect(rtcrm_eval_state(every_fifth_purchase, login, strlen(login), s, sizeof s) == RTCRM_NO_MATCH, "a login");
    expect(strcmp(s, "{\"purchases\":4}") == 0, "a login leaves the state");
    expect(rtcrm_eval_state(every_fifth_purchase, purchase, strlen(purchase), s, sizeof s) == RTCRM_MATCH, "the 5th purchase");
    expect(strcmp(s, "{\"purchases\":5}") == 0, "the 5th purchase is counted");
    /* A stored state that is not an object; a new state that does not fit the caller's buffer. */
    char bad[8] = "[1]";
    expect(rtcrm_eval_state(every_fifth_purchase, purchase, strlen(purchase), bad, sizeof bad) == RTCRM_INVALID_STATE, "not an object");
    char small[8] = "{}";
    expect(rtcrm_eval_state(every_fifth_purchase, purchase, strlen(purchase), small, sizeof small) == RTCRM_FILTER_ERROR, "too small");
    expect(strcmp(small, "{}") == 0, "an error keeps the state");
    printf("%s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
