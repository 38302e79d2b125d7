/*
 * json.h — writing cJSON trees without cJSON's printer.
 *
 * cJSON_PrintUnformatted prints every number with sprintf("%1.15g") and
 * reads it back with sscanf to check the round trip, and grows its output
 * by reallocation: a tenth of paygated's instructions per order in the
 * c-to-b bench went there (docs/performance.md, "Fourth round").  Every
 * number paygated writes is an integer (fen, ids, milliseconds), so integers
 * take a direct path; any other number is printed exactly as cJSON would.
 * The output is byte for byte what cJSON_PrintUnformatted gives for the same
 * tree (test/unit/test_json.c compares the two on generated trees).
 */
#ifndef GW_JSON_H
#define GW_JSON_H

#include "gw.h"

struct cJSON;

/* Appends the compact JSON text of j to b.  GW_EINVAL for a tree cJSON
 * could not print either (an unknown type, a raw item without text). */
gw_err_t gw_json_write(gw_buf_t *b, const struct cJSON *j);

/* Appends an object of obj's members named in keys (NULL-terminated), in
 * the order of keys, leaving out absent and null ones: the text
 * cJSON_PrintUnformatted gives for an object built by copying those members.
 * The search for each key starts after the member found for the one before,
 * so keys listed in obj's own order cost one comparison each. */
gw_err_t gw_json_write_view(gw_buf_t *b, const struct cJSON *obj, const char *const keys[]);

/* cJSON_ParseWithLength's tree, built in one pass over what paygated
 * parses on every order (PostgreSQL's rows, merchants' requests): integers
 * of up to 15 digits without strtod, strings without \\u escapes.  Text
 * outside that (fractions, exponents, \\u escapes, raw control characters,
 * a byte-order mark, trailing bytes, nesting deeper than 64) goes to cJSON
 * itself, so the result is always cJSON's (test/unit/test_json.c compares
 * the two). */
struct cJSON *gw_json_parse(const char *text, size_t len);
/* The one pass alone: NULL where it declines (tests). */
struct cJSON *gw__json_parse_fast(const char *text, size_t len);

/* cJSON_GetObjectItemCaseSensitive, with each name's first two bytes
 * compared before strcmp is called: an order row has 35 members and a
 * c-to-b order looked names up some 900 times, 6 % of paygated's
 * instructions in strcmp (callgrind). */
struct cJSON *gw_json_get(const struct cJSON *obj, const char *key);

/* Whether two member names are equal (the test gw_json_get makes). */
static inline int gw_json_key_eq(const char *a, const char *b)
{
    if (a[0] != b[0]) return 0;
    if (a[0] == '\0') return 1;
    return a[1] == b[1] && (a[1] == '\0' || strcmp(a + 2, b + 2) == 0);
}

/* The compact JSON text of j in memory from malloc (free() it), or NULL
 * (out of memory, or a tree cJSON could not print either). */
char *gw_json_print(const struct cJSON *j);

/* cJSON's allocations through per-thread caches of freed small blocks.
 *
 * A parsed order row is some 80 small allocations, freed together soon
 * after; glibc's per-thread cache keeps 7 blocks of a size, so most of them
 * went through the arena's bins (malloc and free were a quarter of
 * paygated's instructions per order).  These hooks keep up to
 * GW_JSON_CACHE_KEEP freed blocks of each 16-byte size class up to 256
 * bytes, in the thread that installed them (the event loop's: the thread
 * pool's blocks are freed to malloc, so no cache outlives its thread);
 * larger blocks go straight to malloc.  Call it first
 * thing in main(), before any cJSON allocation: a block from plain malloc
 * must never reach the hook's free (nor the other way round), so memory
 * cJSON hands out (cJSON_Print*, item strings) is freed with cJSON_free or
 * cJSON_Delete only.  Under AddressSanitizer cached blocks are poisoned.
 *
 * The cap is what the orders in flight hold at a peak: with 512 a class's
 * blocks overflowed to malloc once some 30 orders were in flight, and the
 * misses cost 11 % of paygated's instructions per order (callgrind, 32
 * connections: 362 000 -> 322 000 with 4 096).  At most ~35 MB in the
 * worst case (every class full), what glibc would keep after the same
 * peak anyway; paygated's RSS at 128 connections stays at 20 MB. */
#define GW_JSON_CACHE_KEEP 16384
void gw_json_alloc_init(void);
/* The calling thread's cached blocks, back to malloc (registered with
 * atexit by gw_json_alloc_init, for leak checkers). */
void gw_json_alloc_trim(void);
/* Blocks cached by the calling thread (tests). */
size_t gw_json_alloc_cached(void);

#endif /* GW_JSON_H */
