/*
 * rtcrm_filter.h: write rtcrm campaign filters in C. A single header implementing the filter
 * ABI (filter-sdk/ABI.md), version 1 and, for per-player state, version 2: the exports, the event
 * buffer for rtcrm_alloc, and a small zero-copy JSON reader for the event's fields.
 *
 *     #include "rtcrm_filter.h"
 *
 *     static int fight_loss(rtcrm_event event) {
 *         return rtcrm_string_eq(event, "data.result", "loss");
 *     }
 *     RTCRM_FILTER(fight_loss)
 *
 * Build (Debian: clang-19, lld-19, wasi-libc, libclang-rt-19-dev-wasm32):
 *
 *     clang-19 --target=wasm32-wasi --sysroot=/usr -nostdlibinc -isystem /usr/include/wasm32-wasi \
 *         -mexec-model=reactor -O2 -o fight-loss.wasm fight-loss.c
 *
 * The module exports memory, rtcrm_alloc, rtcrm_filter, rtcrm_abi_version and _initialize, and
 * imports only what wasi-libc needs from wasi_snapshot_preview1 (none at all unless the filter
 * uses stdio). What it writes to stdout or stderr goes to the host's log, capped.
 *
 * The filter function returns RTCRM_MATCH (1), RTCRM_NO_MATCH (0) or a negative error code
 * (rtcrm_status). Compiled natively (not __wasm__), RTCRM_FILTER defines nothing and the same
 * function can be tested with rtcrm_eval(fn, json, len).
 *
 * Per-player state (a campaign with "state", spec section 12; ABI.md section 9): the filter also
 * takes the player's state, a JSON object the host keeps ("{}" at first). It reads the stored
 * state with the same reader as the event (state->stored) and sets a new one with
 * rtcrm_state_set; a state it does not set stays as it was. RTCRM_FILTER_STATE makes a module of
 * ABI version 2 (RTCRM_FILTER one of version 1):
 *
 *     static int every_fifth_purchase(rtcrm_event event, rtcrm_state *state) {
 *         double n = 0;
 *         char json[32];
 *         if (!rtcrm_string_eq(event, "event_name", "purchase")) return RTCRM_NO_MATCH;
 *         rtcrm_get_number(state->stored, "purchases", &n);
 *         n += 1;
 *         rtcrm_state_set(state, json, (size_t)snprintf(json, sizeof json, "{\"purchases\":%.0f}", n));
 *         return (long long)n % 5 == 0;
 *     }
 *     RTCRM_FILTER_STATE(every_fifth_purchase)
 *
 * Natively, rtcrm_eval_state(fn, json, len, state, cap) runs it with the state in a buffer of
 * your own, as the host would keep it.
 *
 * The JSON reader assumes what the host guarantees: the event is valid UTF-8 JSON, an object.
 * Lookups walk the raw bytes (no allocation, no parse tree); when an object repeats a key, the
 * last one wins, as in JavaScript's JSON.parse. Paths are dotted ("data.player.level"); use
 * rtcrm_member for keys that contain a dot.
 */
#ifndef RTCRM_FILTER_H
#define RTCRM_FILTER_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI version of a module made with RTCRM_FILTER (the rtcrm_abi_version export). */
#define RTCRM_ABI_VERSION 1
/* The ABI version of a module made with RTCRM_FILTER_STATE: per-player state (ABI.md section 9). */
#define RTCRM_STATE_ABI_VERSION 2

/* Export and import attributes (wasm only; empty natively). Imports other than
 * wasi_snapshot_preview1 functions are rejected by the host: RTCRM_IMPORT is for those. */
#if defined(__wasm__)
#define RTCRM_EXPORT(name) __attribute__((export_name(name), used))
#define RTCRM_IMPORT(module, name) __attribute__((import_module(module), import_name(name)))
#else
#define RTCRM_EXPORT(name)
#define RTCRM_IMPORT(module, name)
#endif

/* What rtcrm_filter returns (ABI.md section 3). Invariant: errors are negative; 1 and 0 are the
 * only non-negative codes (the host treats any code above 1 as a trap). */
typedef enum rtcrm_status {
    RTCRM_MATCH = 1,          /* the event matches: a trigger */
    RTCRM_NO_MATCH = 0,       /* no match */
    RTCRM_INVALID_EVENT = -1, /* the event is not what the filter expects */
    RTCRM_FILTER_ERROR = -2,  /* any other failure of the filter */
    RTCRM_INVALID_STATE = -4  /* the stored state is not a JSON object (the same code in every SDK) */
} rtcrm_status;

/* The event: the bytes read from Kafka, not NUL-terminated. Valid during the call only. */
typedef struct rtcrm_event {
    const char *json;
    size_t len;
} rtcrm_event;

typedef enum rtcrm_type {
    RTCRM_MISSING = 0, /* no such field (or the path runs through a non-object) */
    RTCRM_NULL,
    RTCRM_BOOL,
    RTCRM_NUMBER,
    RTCRM_STRING,
    RTCRM_OBJECT,
    RTCRM_ARRAY
} rtcrm_type;

/* A JSON value inside the event: its type and raw text (a string's text includes its quotes). */
typedef struct rtcrm_value {
    rtcrm_type type;
    const char *text;
    size_t len;
} rtcrm_value;

/* ---- JSON reader: internals ---- */

static inline const char *rtcrm__ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

static inline int rtcrm__hex4(const char *p, const char *end, unsigned *out) {
    unsigned v = 0;
    if (end - p < 4) return 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

/* Decodes the next character of a JSON string body at *pp into UTF-8 bytes out[0..*n).
 * Returns 1 for a character, 0 at the closing quote (*pp then points past it), -1 on bad input. */
static inline int rtcrm__next_char(const char **pp, const char *end, unsigned char out[4], int *n) {
    const char *p = *pp;
    if (p >= end) return -1;
    if (*p == '"') { *pp = p + 1; return 0; }
    if (*p != '\\') { out[0] = (unsigned char)*p; *n = 1; *pp = p + 1; return 1; }
    if (++p >= end) return -1;
    switch (*p) {
    case '"': out[0] = '"'; break;
    case '\\': out[0] = '\\'; break;
    case '/': out[0] = '/'; break;
    case 'b': out[0] = '\b'; break;
    case 'f': out[0] = '\f'; break;
    case 'n': out[0] = '\n'; break;
    case 'r': out[0] = '\r'; break;
    case 't': out[0] = '\t'; break;
    case 'u': {
        unsigned cp, lo;
        if (!rtcrm__hex4(p + 1, end, &cp)) return -1;
        p += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF && end - p >= 7 && p[1] == '\\' && p[2] == 'u'
            && rtcrm__hex4(p + 3, end, &lo) && lo >= 0xDC00 && lo <= 0xDFFF) {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            p += 6;
        } else if (cp >= 0xD800 && cp <= 0xDFFF) {
            cp = 0xFFFD; /* a lone surrogate, as JavaScript's TextEncoder would replace it */
        }
        if (cp < 0x80) { out[0] = (unsigned char)cp; *n = 1; }
        else if (cp < 0x800) { out[0] = (unsigned char)(0xC0 | (cp >> 6)); out[1] = (unsigned char)(0x80 | (cp & 0x3F)); *n = 2; }
        else if (cp < 0x10000) {
            out[0] = (unsigned char)(0xE0 | (cp >> 12)); out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
            out[2] = (unsigned char)(0x80 | (cp & 0x3F)); *n = 3;
        } else {
            out[0] = (unsigned char)(0xF0 | (cp >> 18)); out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
            out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F)); out[3] = (unsigned char)(0x80 | (cp & 0x3F)); *n = 4;
        }
        *pp = p + 1;
        return 1;
    }
    default: return -1;
    }
    *n = 1;
    *pp = p + 1;
    return 1;
}

/* Whether the JSON string whose opening quote is at q equals s[0..slen) once unescaped. */
static inline int rtcrm__string_eq(const char *q, const char *end, const char *s, size_t slen) {
    const char *p = q + 1;
    size_t i = 0;
    unsigned char buf[4];
    int n, r;
    while ((r = rtcrm__next_char(&p, end, buf, &n)) == 1) {
        if (i + (size_t)n > slen || memcmp(s + i, buf, (size_t)n) != 0) return 0;
        i += (size_t)n;
    }
    return r == 0 && i == slen;
}

/* Skips the string at p (its opening quote); returns the byte after it, or NULL. */
static inline const char *rtcrm__skip_string(const char *p, const char *end) {
    for (p++; p < end; p++) {
        if (*p == '\\') p++;
        else if (*p == '"') return p + 1;
    }
    return NULL;
}

/* Skips the value at p; returns the byte after it, or NULL. */
static inline const char *rtcrm__skip_value(const char *p, const char *end) {
    if (p >= end) return NULL;
    switch (*p) {
    case '"': return rtcrm__skip_string(p, end);
    case '{':
    case '[': {
        size_t depth = 0;
        while (p < end) {
            char c = *p;
            if (c == '"') { p = rtcrm__skip_string(p, end); if (!p) return NULL; continue; }
            if (c == '{' || c == '[') depth++;
            else if ((c == '}' || c == ']') && --depth == 0) return p + 1;
            p++;
        }
        return NULL;
    }
    default: {
        const char *s = p;
        while (p < end && ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || *p == '-' || *p == '+' || *p == '.' || (*p >= 'A' && *p <= 'Z'))) p++;
        return p > s ? p : NULL;
    }
    }
}

static inline rtcrm_value rtcrm__value_at(const char *p, const char *end) {
    rtcrm_value v = {RTCRM_MISSING, NULL, 0};
    const char *after = rtcrm__skip_value(p, end);
    if (!after) return v;
    switch (*p) {
    case '"': v.type = RTCRM_STRING; break;
    case '{': v.type = RTCRM_OBJECT; break;
    case '[': v.type = RTCRM_ARRAY; break;
    case 't': case 'f': v.type = RTCRM_BOOL; break;
    case 'n': v.type = RTCRM_NULL; break;
    default: v.type = RTCRM_NUMBER; break;
    }
    v.text = p;
    v.len = (size_t)(after - p);
    return v;
}

/* ---- JSON reader: API ---- */

/* The whole event as a value (RTCRM_OBJECT for any event the host passes). */
static inline rtcrm_value rtcrm_root(rtcrm_event event) {
    const char *end = event.json + event.len;
    return rtcrm__value_at(rtcrm__ws(event.json, end), end);
}

/* The member key[0..key_len) of an object (RTCRM_MISSING if absent or obj is not an object). */
static inline rtcrm_value rtcrm_member_n(rtcrm_value obj, const char *key, size_t key_len) {
    rtcrm_value found = {RTCRM_MISSING, NULL, 0};
    if (obj.type != RTCRM_OBJECT) return found;
    const char *p = obj.text + 1, *end = obj.text + obj.len;
    for (;;) {
        p = rtcrm__ws(p, end);
        if (p >= end || *p != '"') return found; /* '}' (or bad input) */
        const char *k = p;
        p = rtcrm__skip_string(p, end);
        if (!p) return found;
        p = rtcrm__ws(p, end);
        if (p >= end || *p != ':') return found;
        p = rtcrm__ws(p + 1, end);
        rtcrm_value v = rtcrm__value_at(p, end);
        if (v.type == RTCRM_MISSING) return found;
        if (rtcrm__string_eq(k, end, key, key_len)) found = v; /* the last duplicate wins */
        p = rtcrm__ws(p + v.len, end);
        if (p >= end || *p != ',') return found;
        p++;
    }
}

static inline rtcrm_value rtcrm_member(rtcrm_value obj, const char *key) {
    return rtcrm_member_n(obj, key, strlen(key));
}

/* The value at a dotted path from the top of the event, e.g. "game" or "data.player.level". */
static inline rtcrm_value rtcrm_get(rtcrm_event event, const char *path) {
    rtcrm_value v = rtcrm_root(event);
    for (;;) {
        const char *dot = strchr(path, '.');
        size_t n = dot ? (size_t)(dot - path) : strlen(path);
        v = rtcrm_member_n(v, path, n);
        if (!dot || v.type == RTCRM_MISSING) return v;
        path = dot + 1;
    }
}

/* Whether v is a string equal to s (NUL-terminated, UTF-8) once unescaped. */
static inline int rtcrm_value_string_eq(rtcrm_value v, const char *s) {
    return v.type == RTCRM_STRING && rtcrm__string_eq(v.text, v.text + v.len, s, strlen(s));
}

/* Copies string v, unescaped and NUL-terminated, into buf[0..cap). Returns its length in bytes,
 * or -1 if v is not a string or does not fit. */
static inline long rtcrm_value_string(rtcrm_value v, char *buf, size_t cap) {
    if (v.type != RTCRM_STRING || cap == 0) return -1;
    const char *p = v.text + 1, *end = v.text + v.len;
    size_t i = 0;
    unsigned char c[4];
    int n, r;
    while ((r = rtcrm__next_char(&p, end, c, &n)) == 1) {
        if (i + (size_t)n >= cap) return -1;
        memcpy(buf + i, c, (size_t)n);
        i += (size_t)n;
    }
    if (r != 0) return -1;
    buf[i] = '\0';
    return (long)i;
}

/* Reads number v into *out (as JavaScript would: a double). Returns 1, or 0 if v is not a number. */
static inline int rtcrm_value_number(rtcrm_value v, double *out) {
    char buf[64];
    char *stop;
    if (v.type != RTCRM_NUMBER || v.len >= sizeof buf) return 0;
    memcpy(buf, v.text, v.len);
    buf[v.len] = '\0';
    *out = strtod(buf, &stop);
    return stop == buf + v.len;
}

/* Reads boolean v into *out (1 or 0). Returns 1, or 0 if v is not a boolean. */
static inline int rtcrm_value_bool(rtcrm_value v, int *out) {
    if (v.type != RTCRM_BOOL) return 0;
    *out = v.text[0] == 't';
    return 1;
}

/* Shorthands on a path: 1 if the field exists with that type (and, for rtcrm_string_eq, value). */
static inline int rtcrm_string_eq(rtcrm_event event, const char *path, const char *s) {
    return rtcrm_value_string_eq(rtcrm_get(event, path), s);
}
static inline long rtcrm_get_string(rtcrm_event event, const char *path, char *buf, size_t cap) {
    return rtcrm_value_string(rtcrm_get(event, path), buf, cap);
}
static inline int rtcrm_get_number(rtcrm_event event, const char *path, double *out) {
    return rtcrm_value_number(rtcrm_get(event, path), out);
}
static inline int rtcrm_get_bool(rtcrm_event event, const char *path, int *out) {
    return rtcrm_value_bool(rtcrm_get(event, path), out);
}

/* ---- Per-player state (ABI version 2) ---- */

/* A player's state during one call of a filter of the state. */
typedef struct rtcrm_state {
    /* The stored state: UTF-8 JSON, an object ("{}" at first), not NUL-terminated. Read it with
     * the event reader: rtcrm_get_number(state->stored, "purchases", &n). Valid during the call. */
    rtcrm_event stored;
    /* Set by rtcrm_state_set: the new state (in the header's own buffer) and whether there is
     * one. A state not set is kept as stored. */
    const char *json;
    size_t len;
    int changed;
} rtcrm_state;

/* The buffer the new state is copied into, kept between calls and grown as needed. */
static char *rtcrm__state_buffer;
static size_t rtcrm__state_cap;

/* Sets the player's new state to json[0..len): UTF-8 JSON, a JSON object, at most the campaign's
 * state.max_bytes (default 1024). The bytes are copied, so json may be a local buffer. The host
 * checks them: not a JSON object, or over the limit, fails the evaluation with error kind "state"
 * and keeps the stored state. Returns 0, or -1 if the copy cannot be allocated (the state is
 * then left as it was). The last call wins. */
static inline int rtcrm_state_set(rtcrm_state *state, const char *json, size_t len) {
    if (len > (size_t)INT32_MAX) return -1;
    if (len > rtcrm__state_cap || rtcrm__state_buffer == NULL) {
        size_t cap = len < 256 ? 256 : len;
        char *grown = (char *)malloc(cap);
        if (grown == NULL) return -1;
        free(rtcrm__state_buffer);
        rtcrm__state_buffer = grown;
        rtcrm__state_cap = cap;
    }
    memcpy(rtcrm__state_buffer, json, len);
    state->json = rtcrm__state_buffer;
    state->len = len;
    state->changed = 1;
    return 0;
}

/* rtcrm_state_set with a NUL-terminated string. */
static inline int rtcrm_state_set_str(rtcrm_state *state, const char *json) {
    return rtcrm_state_set(state, json, strlen(json));
}

/* ---- The ABI ---- */

typedef int (*rtcrm_filter_fn)(rtcrm_event event);
/* A filter of the state: the event and the player's state (RTCRM_FILTER_STATE). */
typedef int (*rtcrm_filter_state_fn)(rtcrm_event event, rtcrm_state *state);

/* Runs a filter on event bytes as rtcrm_filter does; usable natively in tests. */
static inline int rtcrm_eval(rtcrm_filter_fn filter, const char *json, size_t len) {
    rtcrm_event event = {json, len};
    int status = filter(event);
    return status > 1 ? RTCRM_FILTER_ERROR : status; /* never a code the host would call a trap */
}

/* Whether the bytes start, after whitespace, an object: what the host guarantees of a stored state. */
static inline int rtcrm__is_object(const char *json, size_t len) {
    const char *p = rtcrm__ws(json, json + len);
    return p < json + len && *p == '{';
}

/* Runs a filter of the state as rtcrm_filter_state does, on the stored state state[0..len): the
 * status, and in *state the state to store (changed or not). Natively usable in tests. */
static inline int rtcrm__eval_state(rtcrm_filter_state_fn filter, const char *json, size_t len, rtcrm_state *state) {
    if (!rtcrm__is_object(state->stored.json, state->stored.len)) return RTCRM_INVALID_STATE;
    rtcrm_event event = {json, len};
    int status = filter(event, state);
    return status > 1 ? RTCRM_FILTER_ERROR : status;
}

/* Runs a filter of the state on an event, natively, the way the host threads a player's state:
 * state holds the stored state (a NUL-terminated JSON object, "{}" at first) in a buffer of cap
 * bytes; after a verdict (1 or 0) it holds the new state, if the filter set one. On an error
 * status it is left as it was, as the host keeps the stored state. Returns the status, or
 * RTCRM_FILTER_ERROR when the new state does not fit in cap bytes with its NUL. */
static inline int rtcrm_eval_state(rtcrm_filter_state_fn filter, const char *json, size_t len, char *state, size_t cap) {
    rtcrm_state s = {{state, strlen(state)}, NULL, 0, 0};
    int status = rtcrm__eval_state(filter, json, len, &s);
    if ((status == RTCRM_MATCH || status == RTCRM_NO_MATCH) && s.changed) {
        if (s.len >= cap) return RTCRM_FILTER_ERROR;
        memmove(state, s.json, s.len);
        state[s.len] = '\0';
    }
    return status;
}

#if defined(__wasm__)
/* The one event buffer, kept between calls and grown when an event is larger than any before. */
static char *rtcrm__buffer;
static size_t rtcrm__buffer_cap;

static inline int32_t rtcrm__alloc(int32_t len) {
    if (len < 0) return 0;
    if ((size_t)len > rtcrm__buffer_cap || rtcrm__buffer == NULL) {
        size_t cap = (size_t)len < 1024 ? 1024 : (size_t)len;
        char *grown = (char *)malloc(cap);
        if (grown == NULL) return 0; /* memory cannot grow: the host reports the failure */
        free(rtcrm__buffer);
        rtcrm__buffer = grown;
        rtcrm__buffer_cap = cap;
    }
    return (int32_t)(uintptr_t)rtcrm__buffer;
}

/* Defines the ABI exports for filter function fn (once per module). */
#define RTCRM_FILTER(fn)                                                                         \
    RTCRM_EXPORT("rtcrm_alloc") int32_t rtcrm_alloc(int32_t len) { return rtcrm__alloc(len); }   \
    RTCRM_EXPORT("rtcrm_filter") int32_t rtcrm_filter(int32_t ptr, int32_t len) {               \
        if (len < 0) return RTCRM_INVALID_EVENT;                                                 \
        return rtcrm_eval(fn, (const char *)(uintptr_t)(uint32_t)ptr, (size_t)len);              \
    }                                                                                            \
    RTCRM_EXPORT("rtcrm_abi_version") int32_t rtcrm_abi_version(void) { return RTCRM_ABI_VERSION; }

/* The new state's length for rtcrm_state_len: -1 while the stored state stays. */
static int32_t rtcrm__state_len = -1;

static inline int32_t rtcrm__filter_state(rtcrm_filter_state_fn fn, int32_t ptr, int32_t len, int32_t state_ptr, int32_t state_len) {
    rtcrm__state_len = -1;
    if (len < 0 || state_len < 0) return RTCRM_INVALID_EVENT;
    rtcrm_state state = {{(const char *)(uintptr_t)(uint32_t)state_ptr, (size_t)state_len}, NULL, 0, 0};
    int status = rtcrm__eval_state(fn, (const char *)(uintptr_t)(uint32_t)ptr, (size_t)len, &state);
    if ((status == RTCRM_MATCH || status == RTCRM_NO_MATCH) && state.changed) rtcrm__state_len = (int32_t)state.len;
    return status;
}

/* A campaign without state: the filter runs on an empty state, discarded. */
static inline int32_t rtcrm__filter_without_state(rtcrm_filter_state_fn fn, int32_t ptr, int32_t len) {
    if (len < 0) return RTCRM_INVALID_EVENT;
    rtcrm_state state = {{"{}", 2}, NULL, 0, 0};
    return rtcrm__eval_state(fn, (const char *)(uintptr_t)(uint32_t)ptr, (size_t)len, &state);
}

/* Defines the ABI exports of version 2 for a filter of the state fn (once per module, instead of
 * RTCRM_FILTER): rtcrm_filter_state gets the event and the player's stored state; rtcrm_filter
 * (campaigns without state) runs fn on an empty state and discards it. */
#define RTCRM_FILTER_STATE(fn)                                                                   \
    RTCRM_EXPORT("rtcrm_alloc") int32_t rtcrm_alloc(int32_t len) { return rtcrm__alloc(len); }   \
    RTCRM_EXPORT("rtcrm_filter") int32_t rtcrm_filter(int32_t ptr, int32_t len) {               \
        return rtcrm__filter_without_state(fn, ptr, len);                                        \
    }                                                                                            \
    RTCRM_EXPORT("rtcrm_filter_state")                                                           \
    int32_t rtcrm_filter_state(int32_t ptr, int32_t len, int32_t state_ptr, int32_t state_len) { \
        return rtcrm__filter_state(fn, ptr, len, state_ptr, state_len);                          \
    }                                                                                            \
    RTCRM_EXPORT("rtcrm_state_ptr") int32_t rtcrm_state_ptr(void) {                              \
        return (int32_t)(uintptr_t)rtcrm__state_buffer;                                          \
    }                                                                                            \
    RTCRM_EXPORT("rtcrm_state_len") int32_t rtcrm_state_len(void) { return rtcrm__state_len; }   \
    RTCRM_EXPORT("rtcrm_abi_version") int32_t rtcrm_abi_version(void) { return RTCRM_STATE_ABI_VERSION; }
#else
/* Natively there is no ABI: the filter function is tested with rtcrm_eval. */
#define RTCRM_FILTER(fn)
/* Natively there is no ABI: the filter of the state is tested with rtcrm_eval_state. */
#define RTCRM_FILTER_STATE(fn)
#endif

#ifdef __cplusplus
}
#endif

#endif /* RTCRM_FILTER_H */
