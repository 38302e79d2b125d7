/*
 * test_channel.c — the channel loader (core/channel.c), the host API
 * (core/host.c) and the operator CLI (core/ctl.c).
 *
 * Run from the repository root after `make asan`: it loads the modules in
 * build/test-channels/ and compiles variants of test/channels/mock/mock.c
 * itself (a v2, one whose init fails, and bad_major built under the name
 * "mock") with the flags of the Makefile's build/test-channels rule.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "channel.h"
#include "crypto.h"
#include "ctl.h"
#include "host.h"

#define TEST_CHANNELS "build/test-channels"
#define MOCK_SO TEST_CHANNELS "/mock.so"
#define KEY "s3cr3t-merchant-key-42"

/* "major.minor" of the ABI this test is built with (the mock module is
 * built from the same header) */
#define ABI_STR_(a, b) #a "." #b
#define ABI_STR(a, b) ABI_STR_(a, b)
#define ABI_NOW ABI_STR(GW_CHANNEL_ABI_MAJOR, GW_CHANNEL_ABI_MINOR)

static char base[256];       /* temp dir of this run */
static char mock_v2[320];    /* variants compiled by the group setup */
static char mock_noinit[320];
static char mock_major[320];
static char mock_abi10[320];

/* ------------------------------------------------------------------ */
/* helpers */

static int run_cc(const char *out, const char *src, const char *d1, const char *d2)
{
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        const char *argv[] = { "cc", "-std=c11", "-D_GNU_SOURCE", "-O1", "-g", "-Wall", "-Wextra",
                               "-Werror", "-Wshadow", "-Wstrict-prototypes", "-Wmissing-prototypes",
                               "-Wno-unused-parameter", "-fPIC", "-fvisibility=hidden", "-Ichannels",
                               "-DGW_CHANNEL_NAME=\"mock\"", "-shared", "-o", out, src, d1, d2,
                               NULL };
        if (d1 == NULL) argv[20] = NULL;
        else if (d2 == NULL) argv[21] = NULL;
        execvp("cc", (char *const *)argv);
        _exit(127);
    }
    int st;
    if (waitpid(pid, &st, 0) < 0) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void copy_file(const char *src, const char *dst, mode_t mode)
{
    int in = open(src, O_RDONLY);
    assert_true(in >= 0);
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0700);
    assert_true(out >= 0);
    char buf[65536];
    ssize_t n;
    while ((n = read(in, buf, sizeof(buf))) > 0) assert_int_equal(write(out, buf, (size_t)n), n);
    assert_int_equal(fchmod(out, mode), 0);
    close(in);
    close(out);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    gw_buf_t b;
    gw_buf_init(&b, 64 << 20);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) gw_buf_append(&b, chunk, n);
    gw_buf_append(&b, "", 0);
    fclose(f);
    return b.data;
}

static int maps_contains(const char *needle)
{
    char *maps = read_all("/proc/self/maps");
    assert_non_null(maps);
    int hit = strstr(maps, needle) != NULL;
    free(maps);
    return hit;
}

/* stderr capture (the core's log lines go to fd 2) */
static int saved_fd2 = -1;
static char cap_path[320];

static void capture_begin(void)
{
    snprintf(cap_path, sizeof(cap_path), "%s/stderr.txt", base);
    fflush(stderr);
    saved_fd2 = dup(2);
    int fd = open(cap_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    dup2(fd, 2);
    close(fd);
}

static char *capture_end(void)
{
    fflush(stderr);
    dup2(saved_fd2, 2);
    close(saved_fd2);
    saved_fd2 = -1;
    char *s = read_all(cap_path);
    fputs(s, stderr); /* keep the log visible in the test output */
    return s;
}

/* a fresh channels directory */
static void make_dir(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s", base, name);
    assert_int_equal(mkdir(out, 0755), 0);
}

static void path_in(char *out, size_t n, const char *dir, const char *file)
{
    snprintf(out, n, "%s/%s", dir, file);
}

static cJSON *mock_settings(const char *tag)
{
    char text[256];
    snprintf(text, sizeof(text),
             "{\"mock\":{\"gateway_url\":\"http://127.0.0.1:1\",\"version_tag\":\"%s\"}}", tag);
    return cJSON_Parse(text);
}

typedef struct {
    uv_loop_t loop;
    cJSON *settings;
    gw_chan_registry_t *r;
    char dir[300];
} env_t;

static void env_open(env_t *e, const char *name, int drain_ms)
{
    memset(e, 0, sizeof(*e));
    assert_int_equal(uv_loop_init(&e->loop), 0);
    e->settings = mock_settings(name);
    make_dir(e->dir, sizeof(e->dir), name);
    e->r = gw_chan_registry_new(&e->loop, e->dir, e->settings, drain_ms);
    assert_non_null(e->r);
}

static void env_close(env_t *e)
{
    char priv[PATH_MAX];
    snprintf(priv, sizeof(priv), "%s", gw_chan_private_dir(e->r));
    gw_chan_registry_free(e->r);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&e->loop), 0);
    cJSON_Delete(e->settings);
    struct stat st;
    assert_int_equal(stat(priv, &st), -1); /* private directory removed */
}

static const gw_chan_merchant_t merchant = {
    .mch_id = { "M100", 4 },
    .key = { KEY, sizeof(KEY) - 1 },
};

/* A mock notification/response body with a correct (or broken) sig. */
static char *mock_signed_json(const char *fields_json, const char *sign_string, int break_sig)
{
    uint8_t mac[32];
    char hex[65];
    gw_hmac_sha256(KEY, strlen(KEY), sign_string, strlen(sign_string), mac);
    gw_hex_encode(mac, 32, hex, 0);
    if (break_sig) hex[0] = hex[0] == '0' ? '1' : '0';
    size_t n = strlen(fields_json) + 100;
    char *s = malloc(n);
    snprintf(s, n, "{%s,\"sig\":\"%s\"}", fields_json, hex);
    return s;
}

/* Runs notify_parse + notify_verify of m on body; returns verify's result
 * and the ok ack body in ack (caller frees). */
static gw_err_t mock_notify(const gw_chan_module_t *m, const char *body, char **ack)
{
    gw_chan_notify_in_t in = { .method = GW_STRLIT("POST"), .path = GW_STRLIT("/notify/mock"),
                               .headers = GW_STRLIT("Content-Type: application/json\r\n"),
                               .body = gw_str(body) };
    gw_chan_notify_t n;
    memset(&n, 0, sizeof(n));
    gw_buf_init(&n.sign_string, 65536);
    gw_buf_init(&n.ack_ok_body, 65536);
    gw_buf_init(&n.ack_fail_body, 65536);
    gw_err_t rc = m->vt->notify_parse(m->ctx, m->host, &in, &n);
    if (rc == GW_OK) {
        gw_chan_call_t call;
        gw_chan_call_init(&call, m);
        call.merchant = &merchant;
        rc = m->vt->notify_verify(&call, &in, &n);
    }
    *ack = strdup(rc == GW_OK ? n.ack_ok_body.data : (n.ack_fail_body.data ? n.ack_fail_body.data : ""));
    gw_buf_free(&n.sign_string);
    gw_buf_free(&n.ack_ok_body);
    gw_buf_free(&n.ack_fail_body);
    return rc;
}

static const char *NOTE_FIELDS =
    "\"kind\":\"pay\",\"mch_id\":\"M100\",\"out_trade_no\":\"T1\",\"status\":\"SUCCESS\","
    "\"amount\":100,\"trade_no\":\"W1\"";
static const char *NOTE_SIGNED =
    "amount=100&kind=pay&mch_id=M100&out_trade_no=T1&status=SUCCESS&trade_no=W1";

static void assert_ack(const gw_chan_module_t *m, const char *want)
{
    char *body = mock_signed_json(NOTE_FIELDS, NOTE_SIGNED, 0);
    char *ack = NULL;
    assert_int_equal(mock_notify(m, body, &ack), GW_OK);
    assert_string_equal(ack, want);
    free(ack);
    free(body);
}

/* ------------------------------------------------------------------ */
/* group setup: temp dir + variants */

static int group_setup(void **state)
{
    (void)state;
    const char *tmp = getenv("TMPDIR");
    snprintf(base, sizeof(base), "%s/test_channel.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (mkdtemp(base) == NULL) return -1;
    chmod(base, 0755);
    if (access(MOCK_SO, R_OK) != 0) {
        fprintf(stderr, "test_channel: %s missing: run 'make asan' first\n", MOCK_SO);
        return -1;
    }
    snprintf(mock_v2, sizeof(mock_v2), "%s/mock_v2.so", base);
    snprintf(mock_noinit, sizeof(mock_noinit), "%s/mock_noinit.so", base);
    snprintf(mock_major, sizeof(mock_major), "%s/mock_major.so", base);
    snprintf(mock_abi10, sizeof(mock_abi10), "%s/mock_abi10.so", base);
    if (run_cc(mock_v2, "test/channels/mock/mock.c", "-DMOCK_VERSION=\"2.0.0\"", NULL) != 0 ||
        run_cc(mock_noinit, "test/channels/mock/mock.c", "-DMOCK_VERSION=\"3.0.0\"",
               "-DMOCK_BREAK_INIT") != 0 ||
        run_cc(mock_major, "test/channels/bad_major/bad_major.c", NULL, NULL) != 0 ||
        run_cc(mock_abi10, "test/channels/mock/mock.c", "-DMOCK_ABI_1_0", NULL) != 0) {
        fprintf(stderr, "test_channel: cannot compile the mock variants with cc\n");
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    gw_host_shutdown();
    pid_t pid = fork();
    if (pid == 0) {
        execlp("rm", "rm", "-rf", base, (char *)NULL);
        _exit(127);
    }
    int st;
    waitpid(pid, &st, 0);
    return 0;
}

/* ------------------------------------------------------------------ */
/* host API */

static void test_host_table(void **state)
{
    (void)state;
    const gw_host_api_t *h = gw_host_api();
    assert_int_equal(h->version, GW_CHANNEL_ABI_VERSION);
    assert_int_equal(h->struct_size, sizeof(gw_host_api_t));
    /* every member is wired */
    const char *p = (const char *)h + offsetof(gw_host_api_t, log);
    const char *end = (const char *)h + sizeof(*h);
    for (; p < end; p += sizeof(void *)) {
        void *fn;
        memcpy(&fn, p, sizeof(fn));
        assert_non_null(fn);
    }
    char nonce[33];
    assert_int_equal(h->nonce(nonce, 32), GW_OK);
    assert_int_equal(strlen(nonce), 32);
    assert_true(h->now_ms() > 1600000000000ull);
}

/* Nonces come from a per-thread pool of getrandom bytes: across many pool
 * refills they stay distinct and use the whole alphabet, and a forked child
 * never repeats what the parent draws next. */
static void test_host_nonce_pool(void **state)
{
    (void)state;
    const gw_host_api_t *h = gw_host_api();
    enum { N = 400 };
    static char seen[N][33];
    int count[128] = { 0 };
    for (int i = 0; i < N; i++) {
        assert_int_equal(h->nonce(seen[i], 32), GW_OK);
        assert_int_equal(strlen(seen[i]), 32);
        for (int j = 0; j < 32; j++) {
            unsigned char c = (unsigned char)seen[i][j];
            assert_true((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'));
            count[c]++;
        }
        for (int k = 0; k < i; k++) assert_string_not_equal(seen[i], seen[k]);
    }
    int used = 0;
    for (int c = 0; c < 128; c++) used += count[c] > 0;
    assert_int_equal(used, 62); /* 12 800 characters: every one of the 62 appears */
    for (int c = 0; c < 128; c++) assert_true(count[c] < 12800 / 62 * 2); /* none dominates */

    int fd[2];
    assert_int_equal(pipe(fd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char c[33];
        _exit(h->nonce(c, 32) == GW_OK && write(fd[1], c, 32) == 32 ? 0 : 1);
    }
    char parent[33], child[33] = { 0 };
    assert_int_equal(h->nonce(parent, 32), GW_OK);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_int_equal(read(fd[0], child, 32), 32);
    close(fd[0]);
    close(fd[1]);
    assert_string_not_equal(parent, child);
}

static void test_host_xml_parse(void **state)
{
    (void)state;
    const gw_host_api_t *h = gw_host_api();
    const char *doc =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        "<xml>\n"
        "  <bank_type><![CDATA[CFT]]></bank_type>\n"
        "  <charset><![CDATA[UTF-8]]></charset>\n"
        "  <mch_id><![CDATA[755437000006]]></mch_id>\n"
        "  <result_code>0</result_code>\n"
        "  <sign_type>MD5</sign_type>\n"
        "  <total_fee>1</total_fee>\n"
        "  <attach><![CDATA[a&b <c> \xe4\xbd\xa0]]></attach>\n"
        "  <amp>x &amp; y &lt;z&gt; &#65;</amp>\n"
        "  <mixed>pre<![CDATA[ <mid> ]]>post</mixed>\n"
        "  <empty></empty><selfclosed/>\n"
        "  <space> </space>\n"
        "</xml>\n";
    gw_kv_t *kv = h->kv_new();
    assert_int_equal(h->kv_parse_xml(kv, doc, strlen(doc)), GW_OK);
    assert_int_equal(h->kv_count(kv), 12);
    assert_true(gw_str_eq(h->kv_key_at(kv, 0), "bank_type"));
    assert_true(gw_str_eq(h->kv_value_at(kv, 0), "CFT"));
    assert_true(gw_str_eq(h->kv_get(kv, "mch_id"), "755437000006"));
    assert_true(gw_str_eq(h->kv_get(kv, "result_code"), "0"));
    assert_true(gw_str_eq(h->kv_get(kv, "attach"), "a&b <c> \xe4\xbd\xa0"));
    assert_true(gw_str_eq(h->kv_get(kv, "amp"), "x & y <z> A"));
    assert_true(gw_str_eq(h->kv_get(kv, "mixed"), "pre <mid> post"));
    gw_str_t e = h->kv_get(kv, "empty");
    assert_non_null(e.ptr);
    assert_int_equal(e.len, 0);
    assert_true(gw_str_eq(h->kv_get(kv, "selfclosed"), ""));
    assert_true(gw_str_eq(h->kv_get(kv, "space"), " ")); /* raw, not trimmed */
    assert_null(h->kv_get(kv, "missing").ptr);
    h->kv_free(kv);
}

static size_t rnd(uint32_t *seed, size_t n)
{
    *seed = *seed * 1103515245u + 12345u;
    return (*seed >> 8) % n;
}

/* kv_parse_xml reads common documents itself and leaves the rest to
 * libxml2 (core/host.c).  Both readings must agree on every document:
 * same result code, same pairs in the same order.  Documents are built from
 * pieces that are each inside or just outside the fast reader's subset
 * (references, CR, non-ASCII, comments, attributes, nesting, "]]>" in
 * text, broken tags, duplicate keys...), plus random single-byte damage. */
static void test_host_xml_fast_matches_libxml(void **state)
{
    (void)state;
    const gw_host_api_t *h = gw_host_api();
    static const char *const head[] = { "<xml>", "<xml>", "<xml>", "<?xml version=\"1.0\"?><xml>", " <xml>",
                                        "<xml >", "<doc>", "\xef\xbb\xbf<xml>", "<xml>\r\n", "" };
    static const char *const tail[] = { "</xml>", "</xml>", "</xml>\n", "</xml>  \r\n", "</xml >", "</xm>",
                                        "</xml>x", "</xml><!--c-->", "", "</xml></xml>" };
    static const char *const name[] = { "a", "mch_id", "b.c", "d-e", "_f", "g1", "xmlfoo", "p:q", "9x", "a",
                                        "\xe5\x90\x8d", "A" };
    static const char *const text[] = { "", "1", "755437000006", " ", "\n  ", "x y", "a>b", "a]]>b", "a]]b",
                                        "a]>b", "&amp;", "&lt;x&gt;", "&#65;", "&#x4e2d;", "&nope;", "&", "a\rb",
                                        "a\r\nb", "\t", "\x01", "\x7f", "\xe4\xbd\xa0\xe5\xa5\xbd", "\xff",
                                        "<![CDATA[x]]>", "<![CDATA[<&>]]>", "<![CDATA[a]]]]><![CDATA[>b]]>",
                                        "<![CDATA[]]>", "<![CDATA[\r\n]]>", "<![CDATA[\xe4\xbd\xa0]]>",
                                        "<![CDATA[x", "<!-- c -->", "<?pi x?>", "<b>1</b>", "<b/>", "<",
                                        "<![CDATA[a\x02]]>", "pre<![CDATA[mid]]>post" };
    static const char *const sep[] = { "", "", "\n", "  ", "\r\n", "x", "<!--c-->", "\t" };
    uint32_t seed = 20261128;
#define RND(n) rnd(&seed, (n))
    gw_buf_t doc;
    gw_buf_init(&doc, 1 << 16);
    int fast_ok = 0, both_refused = 0;
    for (int iter = 0; iter < 20000; iter++) {
        gw_buf_reset(&doc);
        gw_buf_appends(&doc, head[RND(GW_ARRAY_SIZE(head))]);
        int items = (int)RND(6);
        for (int i = 0; i < items; i++) {
            const char *nm = name[RND(GW_ARRAY_SIZE(name))];
            int attr = RND(20) == 0, selfclose = RND(25) == 0, mismatch = RND(30) == 0;
            gw_buf_appendf(&doc, "%s<%s%s", sep[RND(GW_ARRAY_SIZE(sep))], nm, attr ? " x=\"1\"" : "");
            if (selfclose) {
                gw_buf_appends(&doc, "/>");
                continue;
            }
            gw_buf_appends(&doc, ">");
            int parts = (int)RND(3);
            for (int k = 0; k < parts; k++) gw_buf_appends(&doc, text[RND(GW_ARRAY_SIZE(text))]);
            gw_buf_appendf(&doc, "</%s>", mismatch ? "zz" : nm);
        }
        gw_buf_appends(&doc, sep[RND(GW_ARRAY_SIZE(sep))]);
        gw_buf_appends(&doc, tail[RND(GW_ARRAY_SIZE(tail))]);
        if (doc.len > 0 && RND(8) == 0) { /* one damaged byte */
            static const char dmg[] = "<>&/]\r\n\x80 x!";
            size_t at = RND(doc.len);
            doc.data[at] = dmg[RND(sizeof(dmg) - 1)];
        }
        gw_kv_t *a = h->kv_new(), *b = h->kv_new();
        gw_err_t ra = h->kv_parse_xml(a, doc.data ? doc.data : "", doc.len);
        gw_err_t rb = gw__kv_parse_xml_libxml(b, doc.data ? doc.data : "", doc.len);
        if (ra != rb || h->kv_count(a) != h->kv_count(b))
            fail_msg("differ on [%.*s]: %d/%zu against libxml2 %d/%zu", (int)doc.len, doc.data, ra, h->kv_count(a),
                     rb, h->kv_count(b));
        for (size_t i = 0; i < h->kv_count(a); i++) {
            gw_str_t ka = h->kv_key_at(a, i), kb = h->kv_key_at(b, i);
            gw_str_t va = h->kv_value_at(a, i), vb = h->kv_value_at(b, i);
            if (ka.len != kb.len || memcmp(ka.ptr, kb.ptr, ka.len) != 0 || va.len != vb.len ||
                memcmp(va.ptr, vb.ptr, va.len) != 0)
                fail_msg("pair %zu differs on [%.*s]", i, (int)doc.len, doc.data);
        }
        if (ra == GW_OK) fast_ok++;
        else both_refused++;
        h->kv_free(a);
        h->kv_free(b);
    }
#undef RND
    gw_buf_free(&doc);
    /* the generator reaches both sides */
    assert_true(fast_ok > 1000);
    assert_true(both_refused > 1000);
}

static void test_host_xml_reject(void **state)
{
    (void)state;
    const gw_host_api_t *h = gw_host_api();
    static const char *const bad[] = {
        /* XXE: external entity */
        "<?xml version=\"1.0\"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>"
        "<xml><a>&xxe;</a></xml>",
        /* billion laughs */
        "<?xml version=\"1.0\"?><!DOCTYPE xml [<!ENTITY a \"aaaaaaaaaa\">"
        "<!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\"><!ENTITY c \"&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;\">]>"
        "<xml><a>&c;</a></xml>",
        /* a DOCTYPE alone, external DTD */
        "<!DOCTYPE xml SYSTEM \"http://127.0.0.1:1/x.dtd\"><xml><a>1</a></xml>",
        /* nested elements */
        "<xml><a><b>1</b></a></xml>",
        /* undefined entity */
        "<xml><a>&nope;</a></xml>",
        /* attributes */
        "<xml><a x=\"1\">1</a></xml>",
        "<xml v=\"1\"><a>1</a></xml>",
        /* another root */
        "<doc><a>1</a></doc>",
        /* text at top level of the root */
        "<xml>stray<a>1</a></xml>",
        /* duplicate key */
        "<xml><a>1</a><a>2</a></xml>",
        /* comments and PIs */
        "<xml><a>1<!-- c --></a></xml>",
        "<xml><!-- c --><a>1</a></xml>",
        "<xml><a>1</a></xml><!-- after -->",
        "<xml><?pi x?><a>1</a></xml>",
        /* namespaces */
        "<xml xmlns:p=\"urn:x\"><p:a>1</p:a></xml>",
        "<xml><p:a>1</p:a></xml>",
        "<xml><a xmlns=\"urn:x\">1</a></xml>",
        /* not UTF-8 (and no declaration saying otherwise) */
        "<xml><a>\xff\xfe</a></xml>",
        /* not well-formed */
        "<xml><a>1</b></xml>",
        "<xml><a>1</a>",
        "<xml><a>1</a></xml>trailing",
        "",
        "plain text",
    };
    gw_kv_t *kv = h->kv_new();
    assert_int_equal(h->kv_add(kv, "keep", 4, "me", 2), GW_OK);
    for (size_t i = 0; i < GW_ARRAY_SIZE(bad); i++) {
        gw_err_t rc = h->kv_parse_xml(kv, bad[i], strlen(bad[i]));
        if (rc != GW_EPARSE) fprintf(stderr, "not refused: %s (%d)\n", bad[i], rc);
        assert_int_equal(rc, GW_EPARSE);
        assert_int_equal(h->kv_count(kv), 1); /* rolled back */
    }
    /* size bound */
    size_t big = GW_KV_XML_MAX + 1;
    char *doc = malloc(big);
    memset(doc, ' ', big);
    assert_int_equal(h->kv_parse_xml(kv, doc, big), GW_ETOOBIG);
    free(doc);
    h->kv_free(kv);
}

static void test_host_xml_roundtrip(void **state)
{
    (void)state;
    const gw_host_api_t *h = gw_host_api();
    static const char *const vals[][2] = {
        { "a", "x]]>y" }, { "b", "]]>" }, { "c", "]]]]>>" }, { "d", "<tag attr=\"1\">&amp;</tag>" },
        { "e", "" }, { "f", "line1\nline2\ttab" }, { "g", "]]" }, { "h", "]]>]]>a]]>" },
    };
    gw_kv_t *kv = h->kv_new();
    for (size_t i = 0; i < GW_ARRAY_SIZE(vals); i++)
        assert_int_equal(h->kv_add(kv, vals[i][0], 1, vals[i][1], strlen(vals[i][1])), GW_OK);
    gw_buf_t out;
    gw_buf_init(&out, 1 << 16);
    assert_int_equal(h->kv_to_xml(kv, &out), GW_OK);
    assert_non_null(strstr(out.data, "<a><![CDATA[x]]]]><![CDATA[>y]]></a>"));
    assert_non_null(strstr(out.data, "<e><![CDATA[]]></e>"));
    assert_non_null(strstr(out.data, "<h><![CDATA[]]]]><![CDATA[>]]]]><![CDATA[>a]]]]><![CDATA[>]]></h>"));
    assert_int_equal(out.len, strlen(out.data));
    gw_kv_t *back = h->kv_new();
    assert_int_equal(h->kv_parse_xml(back, out.data, out.len), GW_OK);
    assert_int_equal(h->kv_count(back), GW_ARRAY_SIZE(vals));
    for (size_t i = 0; i < GW_ARRAY_SIZE(vals); i++)
        assert_true(gw_str_eq(h->kv_get(back, vals[i][0]), vals[i][1]));
    h->kv_free(back);
    /* a key that is no XML name, a control character: refused, nothing appended */
    size_t len = out.len;
    gw_kv_t *bad = h->kv_new();
    assert_int_equal(h->kv_add(bad, "a b", 3, "1", 1), GW_OK);
    assert_int_equal(h->kv_to_xml(bad, &out), GW_EINVAL);
    assert_int_equal(out.len, len);
    h->kv_free(bad);
    bad = h->kv_new();
    assert_int_equal(h->kv_add(bad, "a", 1, "\x01", 1), GW_OK);
    assert_int_equal(h->kv_to_xml(bad, &out), GW_EINVAL);
    assert_int_equal(out.len, len);
    h->kv_free(bad);
    /* duplicates are refused at kv_add */
    assert_int_equal(h->kv_add(kv, "a", 1, "again", 5), GW_EEXIST);
    assert_int_equal(h->kv_add(kv, "", 0, "v", 1), GW_EINVAL);
    gw_buf_free(&out);
    h->kv_free(kv);
}

static void test_host_sign_string(void **state)
{
    (void)state;
    const gw_host_api_t *h = gw_host_api();
    /* WeChat Pay v2's published example (PROTOCOLS.md D.2) */
    gw_kv_t *kv = h->kv_new();
    assert_int_equal(h->kv_addf(kv, "mch_id", "%d", 10000100), GW_OK);
    assert_int_equal(h->kv_add(kv, "appid", 5, "wxd930ea5d5a258f4f", 18), GW_OK);
    assert_int_equal(h->kv_add(kv, "nonce_str", 9, "ibuaiVcKdpRxkhJA", 16), GW_OK);
    assert_int_equal(h->kv_add(kv, "device_info", 11, "1000", 4), GW_OK);
    assert_int_equal(h->kv_add(kv, "sign", 4, "IGNORED", 7), GW_OK);
    assert_int_equal(h->kv_add(kv, "body", 4, "test", 4), GW_OK);
    assert_int_equal(h->kv_add(kv, "attach", 6, "", 0), GW_OK);
    static const char *const exclude[] = { "sign", NULL };
    gw_buf_t s;
    gw_buf_init(&s, 4096);
    assert_int_equal(h->kv_sign_string(kv, exclude, GW_KV_SORTED | GW_KV_DROP_EMPTY, &s), GW_OK);
    assert_string_equal(s.data, "appid=wxd930ea5d5a258f4f&body=test&device_info=1000&mch_id=10000100"
                                "&nonce_str=ibuaiVcKdpRxkhJA");
    assert_int_equal(h->buf_appendf(&s, "&key=%s", "192006250b4c09247ec02edce69f6a2d"), GW_OK);
    uint8_t md[32];
    char hex[65];
    h->md5(s.data, s.len, md);
    h->hex_encode(md, 16, hex, 1);
    assert_string_equal(hex, "9A0A8659F005D6984697E2CA0A9CF3B7");
    h->hmac_sha256("192006250b4c09247ec02edce69f6a2d", 32, s.data, s.len, md);
    h->hex_encode(md, 32, hex, 1);
    assert_string_equal(hex, "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6");
    /* insertion order, empties kept, nothing excluded */
    h->buf_reset(&s);
    assert_int_equal(h->kv_sign_string(kv, NULL, 0, &s), GW_OK);
    assert_string_equal(s.data, "mch_id=10000100&appid=wxd930ea5d5a258f4f&nonce_str=ibuaiVcKdpRxkhJA"
                                "&device_info=1000&sign=IGNORED&body=test&attach=");
    h->kv_free(kv);
    /* byte-wise order: "a" < "aB" < "a_b" ('B' 0x42 < '_' 0x5F); values raw */
    kv = h->kv_new();
    assert_int_equal(h->kv_add(kv, "a_b", 3, "x y&z=", 6), GW_OK);
    assert_int_equal(h->kv_add(kv, "aB", 2, " ", 1), GW_OK);
    assert_int_equal(h->kv_add(kv, "a", 1, "1", 1), GW_OK);
    h->buf_reset(&s);
    assert_int_equal(h->kv_sign_string(kv, NULL, GW_KV_SORTED | GW_KV_DROP_EMPTY, &s), GW_OK);
    assert_string_equal(s.data, "a=1&aB= &a_b=x y&z=");
    h->kv_free(kv);
    /* empty list: empty string */
    kv = h->kv_new();
    h->buf_reset(&s);
    assert_int_equal(h->kv_sign_string(kv, NULL, GW_KV_SORTED, &s), GW_OK);
    assert_string_equal(s.data, "");
    h->kv_free(kv);
    gw_buf_free(&s);
}

static void test_host_form(void **state)
{
    (void)state;
    const gw_host_api_t *h = gw_host_api();
    const char *form = "a=1&b=hello+world&c=%E4%BD%A0%26&d=&e&&sign_type=RSA2";
    gw_kv_t *kv = h->kv_new();
    assert_int_equal(h->kv_parse_form(kv, form, strlen(form)), GW_OK);
    assert_int_equal(h->kv_count(kv), 6);
    assert_true(gw_str_eq(h->kv_get(kv, "a"), "1"));
    assert_true(gw_str_eq(h->kv_get(kv, "b"), "hello world"));
    assert_true(gw_str_eq(h->kv_get(kv, "c"), "\xe4\xbd\xa0&"));
    assert_true(gw_str_eq(h->kv_get(kv, "d"), ""));
    assert_true(gw_str_eq(h->kv_get(kv, "e"), ""));
    gw_buf_t out;
    gw_buf_init(&out, 4096);
    assert_int_equal(h->kv_to_form(kv, &out), GW_OK);
    assert_string_equal(out.data, "a=1&b=hello%20world&c=%E4%BD%A0%26&d=&e=&sign_type=RSA2");
    gw_kv_t *back = h->kv_new();
    assert_int_equal(h->kv_parse_form(back, out.data, out.len), GW_OK);
    for (size_t i = 0; i < h->kv_count(kv); i++) {
        gw_str_t k = h->kv_key_at(kv, i), v = h->kv_value_at(kv, i);
        gw_str_t w = h->kv_key_at(back, i), x = h->kv_value_at(back, i);
        assert_int_equal(k.len, w.len);
        assert_memory_equal(k.ptr, w.ptr, k.len);
        assert_int_equal(v.len, x.len);
        if (v.len) assert_memory_equal(v.ptr, x.ptr, v.len);
    }
    h->kv_free(back);
    /* bad escape, duplicate, empty key: refused and rolled back */
    static const char *const bad[] = { "x=%G1", "a=2", "=v", "z=1&z=2" };
    for (size_t i = 0; i < GW_ARRAY_SIZE(bad); i++) {
        assert_int_equal(h->kv_parse_form(kv, bad[i], strlen(bad[i])), GW_EPARSE);
        assert_int_equal(h->kv_count(kv), 6);
    }
    gw_buf_free(&out);
    h->kv_free(kv);
}

static void test_host_header_get(void **state)
{
    (void)state;
    const gw_host_api_t *h = gw_host_api();
    gw_str_t hs = GW_STRLIT("Content-Type: text/plain\r\n"
                            "X-Mock-Signature:   abc def \t\r\n"
                            "x-empty:\r\n"
                            "Wechatpay-Serial: 5157F09EFDC096DE15EBE81A47057A7232F1B8E1\n"
                            "Last: v");
    assert_true(gw_str_eq(h->header_get(hs, "content-type"), "text/plain"));
    assert_true(gw_str_eq(h->header_get(hs, "X-MOCK-SIGNATURE"), "abc def"));
    gw_str_t e = h->header_get(hs, "X-Empty");
    assert_non_null(e.ptr);
    assert_int_equal(e.len, 0);
    assert_true(gw_str_eq(h->header_get(hs, "wechatpay-serial"),
                          "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"));
    assert_true(gw_str_eq(h->header_get(hs, "Last"), "v"));
    assert_null(h->header_get(hs, "Content").ptr);
    assert_null(h->header_get(hs, "Missing").ptr);
    assert_null(h->header_get((gw_str_t){ NULL, 0 }, "Last").ptr);
}

static void test_host_json(void **state)
{
    (void)state;
    const gw_host_api_t *h = gw_host_api();
    const char *text = " {\"s\":\"v\",\"n\":42,\"f\":1.5,\"big\":1e300,\"o\":{\"k\":\"x\"}} \n";
    gw_json_t *j = h->json_parse(text, strlen(text));
    assert_non_null(j);
    assert_string_equal(h->json_string(h->json_get(j, "s")), "v");
    assert_null(h->json_string(h->json_get(j, "n")));
    int64_t v = 0;
    assert_int_equal(h->json_int(h->json_get(j, "n"), &v), GW_OK);
    assert_int_equal(v, 42);
    assert_int_equal(h->json_int(h->json_get(j, "f"), &v), GW_EINVAL);
    assert_int_equal(h->json_int(h->json_get(j, "big"), &v), GW_EINVAL);
    assert_int_equal(h->json_int(h->json_get(j, "s"), &v), GW_EINVAL);
    assert_int_equal(h->json_int(NULL, &v), GW_EINVAL);
    assert_string_equal(h->json_string(h->json_get(h->json_get(j, "o"), "k")), "x");
    assert_null(h->json_get(j, "missing"));
    assert_null(h->json_get(h->json_get(j, "s"), "k")); /* not an object */
    assert_null(h->json_get(NULL, "k"));
    h->json_free(j);
    assert_null(h->json_parse("{\"a\":1} x", 9)); /* trailing garbage */
    assert_null(h->json_parse("{\"a\":", 5));
    gw_buf_t b;
    gw_buf_init(&b, 256);
    assert_int_equal(h->json_quote(&b, "a\"b\\c\n\x01\xe4\xbd\xa0", 10), GW_OK);
    assert_string_equal(b.data, "\"a\\\"b\\\\c\\n\\u0001\xe4\xbd\xa0\"");
    h->buf_reset(&b);
    assert_int_equal(h->json_quote(&b, "", 0), GW_OK);
    assert_string_equal(b.data, "\"\"");
    gw_buf_free(&b);
}

static void test_host_rsa_cache(void **state)
{
    (void)state;
    const gw_host_api_t *h = gw_host_api();
    char *priv = read_all("test/fixtures/keys/rsa_priv_pkcs8.pem");
    char *pub = read_all("test/fixtures/keys/rsa_pub_spki.pem");
    assert_non_null(priv);
    assert_non_null(pub);
    char *priv2 = strdup(priv); /* same text, another buffer */
    size_t n0 = gw_host_rsa_cache_size();
    gw_rsa_key_t *k1 = h->rsa_private(priv, strlen(priv));
    gw_rsa_key_t *k2 = h->rsa_private(priv2, strlen(priv2));
    assert_non_null(k1);
    assert_ptr_equal(k1, k2);
    gw_rsa_key_t *p1 = h->rsa_public(pub, strlen(pub));
    assert_non_null(p1);
    assert_ptr_not_equal(p1, k1);
    assert_ptr_equal(h->rsa_public(pub, strlen(pub)), p1);
    assert_int_equal(gw_host_rsa_cache_size(), n0 + 2);
    /* a private key text is no public key and vice versa; garbage is NULL */
    assert_null(h->rsa_public("not a key", 9));
    assert_null(h->rsa_private(pub, strlen(pub)));
    assert_null(h->rsa_private("", 0));
    assert_int_equal(gw_host_rsa_cache_size(), n0 + 2);
    /* and they work */
    gw_buf_t sig;
    gw_buf_init(&sig, 4096);
    assert_int_equal(h->rsa_sign(k1, GW_HASH_SHA256, "msg", 3, &sig), GW_OK);
    assert_int_equal(h->rsa_verify(p1, GW_HASH_SHA256, "msg", 3, sig.data, sig.len), GW_OK);
    assert_int_equal(h->rsa_verify(p1, GW_HASH_SHA256, "msh", 3, sig.data, sig.len), GW_ESIGN);
    gw_buf_free(&sig);
    free(priv);
    free(priv2);
    free(pub);
}

static void test_host_log_tag(void **state)
{
    (void)state;
    const gw_host_api_t *h = gw_host_api();
    int ctx_a, ctx_b;
    assert_int_equal(gw_host_register_ctx(&ctx_a, "swiftpass"), GW_OK);
    capture_begin();
    h->log(&ctx_a, GW_LOG_WARN_, "hello %d", 7);
    h->log(&ctx_b, GW_LOG_WARN_, "anonymous");
    h->log(&ctx_a, GW_LOG_DEBUG_, "not shown at info level");
    char *out = capture_end();
    gw_host_unregister_ctx(&ctx_a);
    assert_non_null(strstr(out, "[swiftpass] hello 7"));
    assert_non_null(strstr(out, "[channel] anonymous"));
    assert_null(strstr(out, "not shown"));
    free(out);
}

/* ------------------------------------------------------------------ */
/* loader */

static void test_load_acquire(void **state)
{
    (void)state;
    env_t e;
    env_open(&e, "load", 1000);
    char p[PATH_MAX];
    path_in(p, sizeof(p), e.dir, "mock.so");
    copy_file(MOCK_SO, p, 0755);
    assert_int_equal(gw_chan_generation(e.r), 0);
    assert_null(gw_chan_acquire(e.r, "mock"));
    assert_int_equal(gw_chan_reload(e.r), GW_OK);
    assert_int_equal(gw_chan_generation(e.r), 1);
    assert_int_equal(gw_chan_count(e.r), 1);
    assert_null(gw_chan_last_error(e.r, "mock.so"));
    assert_null(gw_chan_acquire(e.r, "nope"));

    gw_chan_module_t *m = gw_chan_acquire(e.r, "mock");
    assert_non_null(m);
    assert_string_equal(m->name, "mock");
    assert_string_equal(m->version, "1.0.0");
    assert_string_equal(m->file, "mock.so");
    assert_int_equal(m->generation, 1);

    /* build a pay request through it */
    gw_chan_order_t order = { .out_trade_no = GW_STRLIT("T1"), .amount = 100,
                              .subject = GW_STRLIT("tea"), .method = GW_METHOD_WECHAT_QR,
                              .notify_url = GW_STRLIT("http://gw/notify/mock") };
    gw_chan_call_t call;
    gw_chan_call_init(&call, m);
    call.merchant = &merchant;
    call.order = &order;
    gw_chan_request_t req;
    memset(&req, 0, sizeof(req));
    gw_buf_init(&req.url, 4096);
    gw_buf_init(&req.headers, 4096);
    gw_buf_init(&req.body, 4096);
    gw_buf_init(&req.sign_string, 4096);
    assert_int_equal(m->vt->pay(&call, &req), GW_OK);
    assert_string_equal(req.url.data, "http://127.0.0.1:1/pay");
    assert_non_null(strstr(req.body.data, "\"out_trade_no\":\"T1\""));
    assert_non_null(strstr(req.headers.data, "X-Mock-Version: 1.0.0\r\n"));
    assert_non_null(strstr(req.headers.data, "X-Mock-Tag: load\r\n"));
    uint8_t mac[32];
    char hex[65];
    gw_hmac_sha256(KEY, strlen(KEY), req.body.data, req.body.len, mac);
    gw_hex_encode(mac, 32, hex, 0);
    gw_str_t sig = m->host->header_get((gw_str_t){ req.headers.data, req.headers.len },
                                       "X-Mock-Signature");
    assert_true(gw_str_eq(sig, hex));
    assert_string_equal(req.sign_string.data, req.body.data);

    /* parse a signed response; a bad signature is UNKNOWN, never FAILED */
    const char *fields = "\"status\":\"SUCCESS\",\"trade_no\":\"W9\",\"amount\":100,\"mch_id\":\"M100\"";
    const char *signed_str = "amount=100&mch_id=M100&status=SUCCESS&trade_no=W9";
    for (int broken = 0; broken < 2; broken++) {
        char *body = mock_signed_json(fields, signed_str, broken);
        gw_chan_response_t resp = { .status = 200, .body = gw_str(body) };
        gw_chan_result_t res;
        memset(&res, 0, sizeof(res));
        gw_buf_init(&res.pay_data, 4096);
        assert_int_equal(m->vt->pay_parse(&call, &resp, &res), GW_OK);
        if (!broken) {
            assert_int_equal(res.status, GW_PAY_SUCCESS);
            assert_int_equal(res.amount, 100);
            assert_string_equal(res.channel_trade_no, "W9");
            assert_string_equal(res.mch_id, "M100");
        } else {
            assert_int_equal(res.status, GW_PAY_UNKNOWN);
            assert_string_equal(res.raw_msg, "bad signature");
        }
        gw_buf_free(&res.pay_data);
        free(body);
    }
    gw_buf_free(&req.url);
    gw_buf_free(&req.headers);
    gw_buf_free(&req.body);
    gw_buf_free(&req.sign_string);

    /* the admin listing */
    cJSON *arr = cJSON_CreateArray();
    gw_chan_registry_json(e.r, arr);
    assert_int_equal(cJSON_GetArraySize(arr), 1);
    cJSON *o = cJSON_GetArrayItem(arr, 0);
    assert_string_equal(cJSON_GetObjectItem(o, "name")->valuestring, "mock");
    assert_string_equal(cJSON_GetObjectItem(o, "version")->valuestring, "1.0.0");
    assert_string_equal(cJSON_GetObjectItem(o, "file")->valuestring, "mock.so");
    assert_string_equal(cJSON_GetObjectItem(o, "abi")->valuestring, ABI_NOW);
    assert_int_equal(cJSON_GetObjectItem(o, "generation")->valueint, 1);
    assert_int_equal(cJSON_GetObjectItem(o, "inflight")->valueint, 1);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "methods")), 3);
    assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "methods"), 0)->valuestring,
                        "wechat_qr");
    assert_true(cJSON_IsString(cJSON_GetObjectItem(o, "loaded_at")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(o, "last_error")));
    cJSON_Delete(arr);

    gw_chan_release(m);
    capture_begin();
    env_close(&e);
    char *log = capture_end();
    assert_non_null(strstr(log, "[mock] fini v1.0.0"));
    free(log);
}

static void test_hot_reload(void **state)
{
    (void)state;
    env_t e;
    env_open(&e, "hot", 1000);
    char p[PATH_MAX], old_copy[PATH_MAX + 32];
    path_in(p, sizeof(p), e.dir, "mock.so");
    copy_file(MOCK_SO, p, 0755);
    assert_int_equal(gw_chan_reload(e.r), GW_OK);
    gw_chan_module_t *m1 = gw_chan_acquire(e.r, "mock");
    assert_non_null(m1);
    assert_string_equal(m1->version, "1.0.0");
    snprintf(old_copy, sizeof(old_copy), "%s/mock.1.", gw_chan_private_dir(e.r));
    assert_true(maps_contains(old_copy));

    /* the new build replaces the file at the same path */
    copy_file(mock_v2, p, 0755);
    assert_int_equal(gw_chan_reload(e.r), GW_OK);
    assert_int_equal(gw_chan_generation(e.r), 2);
    gw_chan_module_t *m2 = gw_chan_acquire(e.r, "mock");
    assert_non_null(m2);
    assert_string_equal(m2->version, "2.0.0");
    assert_int_equal(m2->generation, 2);
    assert_ptr_not_equal(m1->ctx, m2->ctx);

    /* the call that started on generation 1 still runs version 1's code */
    assert_string_equal(m1->version, "1.0.0");
    assert_ack(m1, "ok v1.0.0");
    assert_ack(m2, "ok v2.0.0");
    assert_int_equal(gw_chan_draining(e.r), 1);
    assert_true(maps_contains(old_copy));

    /* last pin gone: generation 1 is finalised and unloaded */
    capture_begin();
    gw_chan_release(m1);
    char *log = capture_end();
    assert_non_null(strstr(log, "[mock] fini v1.0.0"));
    assert_null(strstr(log, "fini v2.0.0"));
    free(log);
    assert_int_equal(gw_chan_draining(e.r), 0);
    assert_false(maps_contains(old_copy));
    char first[PATH_MAX + 32];
    snprintf(first, sizeof(first), "%s/mock.1.1.so", gw_chan_private_dir(e.r));
    assert_int_equal(access(first, F_OK), -1);
    assert_ack(m2, "ok v2.0.0");
    gw_chan_release(m2);

    /* an unchanged file is reloaded too (a new generation, same version) */
    assert_int_equal(gw_chan_reload(e.r), GW_OK);
    gw_chan_module_t *m3 = gw_chan_acquire(e.r, "mock");
    assert_string_equal(m3->version, "2.0.0");
    assert_int_equal(m3->generation, 3);
    gw_chan_release(m3);
    capture_begin();
    env_close(&e);
    log = capture_end();
    assert_non_null(strstr(log, "[mock] fini v2.0.0"));
    free(log);
}

/* A module built for ABI 1.0 loads into a 1.1+ core, and the member added in
 * 1.1 (policy) reads as NULL even though the module's static struct has it
 * set: the core honours struct_size, not what lies beyond it. */
static void test_older_minor(void **state)
{
    (void)state;
    env_t e;
    env_open(&e, "minor", 1000);
    char p[PATH_MAX];
    path_in(p, sizeof(p), e.dir, "mock.so");
    copy_file(mock_abi10, p, 0755);
    assert_int_equal(gw_chan_reload(e.r), GW_OK);
    gw_chan_module_t *m = gw_chan_acquire(e.r, "mock");
    assert_non_null(m);
    assert_null(m->vt->policy);
    assert_false(GW_CHAN_HAS(m, policy));
    assert_ack(m, "ok v1.0.0");
    gw_chan_release(m);
    /* the current build of the same source does expose it */
    copy_file(MOCK_SO, p, 0755);
    assert_int_equal(gw_chan_reload(e.r), GW_OK);
    m = gw_chan_acquire(e.r, "mock");
    assert_non_null(m->vt->policy);
    assert_int_equal(m->vt->policy->poll_deadline_ms, 6000);
    gw_chan_release(m);
    env_close(&e);
}

/* Each broken build of "mock" copied over mock.so: rejected with its
 * reason, and the good version keeps serving. */
static void test_bad_update_keeps_previous(void **state)
{
    (void)state;
    env_t e;
    env_open(&e, "keep", 1000);
    char p[PATH_MAX];
    path_in(p, sizeof(p), e.dir, "mock.so");
    copy_file(MOCK_SO, p, 0755);
    assert_int_equal(gw_chan_reload(e.r), GW_OK);

    struct {
        const char *src; /* NULL: a text file */
        mode_t mode;
        const char *why;
    } cases[] = {
        { mock_noinit, 0755,
          "channel \"mock.so\": init failed: broken on purpose (MOCK_BREAK_INIT) (GW_EINVAL)" },
        { mock_major, 0755, "channel \"mock.so\": ABI major 2 instead of 1" },
        { NULL, 0644, "channel \"mock.so\": dlopen failed: " },
        { MOCK_SO, 0666, "channel \"mock.so\": is world-writable (mode 0666); refusing to load it" },
    };
    for (size_t i = 0; i < GW_ARRAY_SIZE(cases); i++) {
        unlink(p);
        if (cases[i].src) copy_file(cases[i].src, p, cases[i].mode);
        else write_text(p, "this is not an ELF object\n");
        assert_int_equal(gw_chan_reload(e.r), GW_OK);
        assert_int_equal(gw_chan_generation(e.r), 2 + i);
        const char *err = gw_chan_last_error(e.r, "mock.so");
        assert_non_null(err);
        if (strncmp(err, cases[i].why, strlen(cases[i].why)) != 0)
            fail_msg("case %zu: got '%s', want '%s…'", i, err, cases[i].why);
        gw_chan_module_t *m = gw_chan_acquire(e.r, "mock");
        assert_non_null(m);
        assert_string_equal(m->version, "1.0.0");
        assert_int_equal(m->generation, 2 + i);
        assert_ack(m, "ok v1.0.0");
        cJSON *arr = cJSON_CreateArray();
        gw_chan_registry_json(e.r, arr);
        assert_int_equal(cJSON_GetArraySize(arr), 1);
        cJSON *o = cJSON_GetArrayItem(arr, 0);
        assert_string_equal(cJSON_GetObjectItem(o, "version")->valuestring, "1.0.0");
        assert_int_equal(cJSON_GetObjectItem(o, "generation")->valueint, 1); /* loaded in 1 */
        assert_string_equal(cJSON_GetObjectItem(o, "last_error")->valuestring, err);
        cJSON_Delete(arr);
        gw_chan_release(m);
    }
    /* a good build again replaces it, and the error clears */
    unlink(p);
    copy_file(mock_v2, p, 0755);
    capture_begin();
    assert_int_equal(gw_chan_reload(e.r), GW_OK);
    char *log = capture_end();
    assert_non_null(strstr(log, "[mock] fini v1.0.0")); /* v1 finally goes */
    free(log);
    assert_null(gw_chan_last_error(e.r, "mock.so"));
    gw_chan_module_t *m = gw_chan_acquire(e.r, "mock");
    assert_string_equal(m->version, "2.0.0");
    gw_chan_release(m);
    env_close(&e);
}

static void test_bad_modules(void **state)
{
    (void)state;
    env_t e;
    env_open(&e, "bad", 1000);
    char p[PATH_MAX], q[PATH_MAX];
    static const char *const bad[] = { "bad_major", "bad_size", "bad_nosym", "bad_null", "bad_init",
                                       "bad_sig" };
    for (size_t i = 0; i < GW_ARRAY_SIZE(bad); i++) {
        char src[PATH_MAX], name[64];
        snprintf(src, sizeof(src), TEST_CHANNELS "/%s.so", bad[i]);
        snprintf(name, sizeof(name), "%s.so", bad[i]);
        path_in(p, sizeof(p), e.dir, name);
        copy_file(src, p, 0755);
    }
    path_in(p, sizeof(p), e.dir, "mock.so");
    copy_file(MOCK_SO, p, 0755);
    path_in(p, sizeof(p), e.dir, "junk.so");
    write_text(p, "not a shared object\n");
    path_in(p, sizeof(p), e.dir, "ww.so");
    copy_file(TEST_CHANNELS "/bad_init.so", p, 0757);
    path_in(p, sizeof(p), e.dir, "dir.so");
    assert_int_equal(mkdir(p, 0755), 0);
    path_in(p, sizeof(p), e.dir, "link.so");
    assert_int_equal(symlink(MOCK_SO, p), 0);
    path_in(p, sizeof(p), e.dir, "dup.so"); /* a second "mock" */
    copy_file(MOCK_SO, p, 0755);
    /* not candidates: ignored */
    path_in(p, sizeof(p), e.dir, "README.txt");
    write_text(p, "x");
    path_in(p, sizeof(p), e.dir, ".hidden.so");
    write_text(p, "x");
    path_in(p, sizeof(p), e.dir, "mock.so.bak");
    write_text(p, "x");
    int root = geteuid() == 0;
    if (root) {
        path_in(p, sizeof(p), e.dir, "other.so");
        copy_file(MOCK_SO, p, 0755);
        assert_int_equal(chown(p, 65534, 65534), 0);
    }

    assert_int_equal(gw_chan_reload(e.r), GW_OK);
    assert_int_equal(gw_chan_count(e.r), 1);
    gw_chan_module_t *m = gw_chan_acquire(e.r, "mock");
    assert_non_null(m);
    assert_string_equal(m->file, "dup.so"); /* sorted: dup.so comes before mock.so */
    gw_chan_release(m);

    snprintf(q, sizeof(q), "struct_size %zu is smaller than the ABI 1.0 size %zu",
             offsetof(gw_channel_t, notify_verify), (size_t)GW_CHANNEL_V1_SIZE);
    struct {
        const char *file, *why;
    } want[] = {
        { "bad_major.so", "ABI major 2 instead of 1" },
        { "bad_size.so", q },
        { "bad_nosym.so", "no gw_channel_entry() symbol: not a paygate channel module" },
        { "bad_null.so", "mandatory method pay_parse is NULL" },
        { "bad_init.so",
          "init failed: refusing to start: missing settings.secret (on purpose) (GW_EINVAL)" },
        { "bad_sig.so", "build_sig \"gw1:ilp32:le\" instead of \"gw1:lp64:le\"" },
        { "junk.so", "dlopen failed: " },
        { "ww.so", "is world-writable (mode 0757); refusing to load it" },
        { "dir.so", "not a regular file; refusing to load it" },
        { "link.so", "is a symbolic link; refusing to load it" },
        { "mock.so", "duplicate channel name \"mock\" (already loaded from \"dup.so\")" },
        { "other.so", "is owned by uid 65534, not by root or the current user" },
    };
    for (size_t i = 0; i < GW_ARRAY_SIZE(want); i++) {
        if (!root && strcmp(want[i].file, "other.so") == 0) continue;
        char expect[600];
        snprintf(expect, sizeof(expect), "channel \"%s\": %s", want[i].file, want[i].why);
        const char *err = gw_chan_last_error(e.r, want[i].file);
        if (err == NULL || strncmp(err, expect, strlen(expect)) != 0)
            fail_msg("%s: got '%s', want '%s…'", want[i].file, err ? err : "(null)", expect);
    }
    assert_null(gw_chan_last_error(e.r, "README.txt"));
    assert_null(gw_chan_last_error(e.r, ".hidden.so"));

    /* the listing: the serving channel, then every rejected file */
    cJSON *arr = cJSON_CreateArray();
    gw_chan_registry_json(e.r, arr);
    assert_int_equal(cJSON_GetArraySize(arr), 1 + (int)GW_ARRAY_SIZE(want) - (root ? 0 : 1));
    int seen_major = 0;
    for (cJSON *o = arr->child; o; o = o->next) {
        cJSON *f = cJSON_GetObjectItem(o, "file");
        if (strcmp(f->valuestring, "bad_major.so") == 0) {
            seen_major = 1;
            assert_true(cJSON_IsNull(cJSON_GetObjectItem(o, "name"))); /* read after validation */
            assert_true(cJSON_IsNull(cJSON_GetObjectItem(o, "version")));
            assert_non_null(strstr(cJSON_GetObjectItem(o, "last_error")->valuestring, "ABI major 2"));
        }
        if (strcmp(f->valuestring, "bad_init.so") == 0)
            assert_string_equal(cJSON_GetObjectItem(o, "name")->valuestring, "bad_init");
    }
    assert_true(seen_major);
    cJSON_Delete(arr);
    env_close(&e);
}

static void test_removed_file(void **state)
{
    (void)state;
    env_t e;
    env_open(&e, "removed", 1000);
    char p[PATH_MAX];
    path_in(p, sizeof(p), e.dir, "mock.so");
    copy_file(MOCK_SO, p, 0755);
    assert_int_equal(gw_chan_reload(e.r), GW_OK);
    assert_int_equal(gw_chan_count(e.r), 1);
    unlink(p);
    capture_begin();
    assert_int_equal(gw_chan_reload(e.r), GW_OK);
    char *log = capture_end();
    assert_non_null(strstr(log, "[mock] fini v1.0.0"));
    free(log);
    assert_int_equal(gw_chan_count(e.r), 0);
    assert_null(gw_chan_acquire(e.r, "mock"));
    cJSON *arr = cJSON_CreateArray();
    gw_chan_registry_json(e.r, arr);
    assert_int_equal(cJSON_GetArraySize(arr), 0);
    cJSON_Delete(arr);
    env_close(&e);
}

static void test_unreadable_dir(void **state)
{
    (void)state;
    env_t e;
    env_open(&e, "gone", 1000);
    char p[PATH_MAX], moved[PATH_MAX];
    path_in(p, sizeof(p), e.dir, "mock.so");
    copy_file(MOCK_SO, p, 0755);
    assert_int_equal(gw_chan_reload(e.r), GW_OK);
    snprintf(moved, sizeof(moved), "%s.moved", e.dir);
    assert_int_equal(rename(e.dir, moved), 0);
    assert_int_equal(gw_chan_reload(e.r), GW_EIO);
    assert_int_equal(gw_chan_generation(e.r), 1); /* kept entirely */
    gw_chan_module_t *m = gw_chan_acquire(e.r, "mock");
    assert_non_null(m);
    assert_string_equal(m->version, "1.0.0");
    gw_chan_release(m);
    assert_int_equal(rename(moved, e.dir), 0);
    env_close(&e);
}

/* A process that did not exit cleanly leaves its module copies; the next
 * start removes them, and nothing else. */
static int exists(const char *dir, const char *name)
{
    char p[PATH_MAX];
    struct stat st;
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    return lstat(p, &st) == 0;
}

static void put_file(const char *dir, const char *name, const char *file)
{
    char p[PATH_MAX];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    assert_true(mkdir(p, 0700) == 0 || errno == EEXIST);
    if (file == NULL) return;
    snprintf(p, sizeof(p), "%s/%s/%s", dir, name, file);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0700);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "ELF", 3), 3);
    close(fd);
}

static void test_sweep_stale(void **state)
{
    (void)state;
    char tmp[PATH_MAX], name[PATH_MAX + 128], old_tmp[PATH_MAX] = "";
    snprintf(tmp, sizeof(tmp), "%s/sweep", base);
    assert_int_equal(mkdir(tmp, 0700), 0);
    if (getenv("TMPDIR")) snprintf(old_tmp, sizeof(old_tmp), "%s", getenv("TMPDIR"));
    setenv("TMPDIR", tmp, 1);
    /* a pid that is gone: a child that has exited and been reaped */
    pid_t dead = fork();
    if (dead == 0) _exit(0);
    int st;
    waitpid(dead, &st, 0);
    char gone1[64], gone2[64], gone_link[64], gone_sym[64], mine[64];
    snprintf(gone1, sizeof(gone1), "paygate-chan.%ld.aaaaaa", (long)dead);
    snprintf(gone2, sizeof(gone2), "paygate-chan.%ld.bbbbbb", (long)dead);
    snprintf(gone_link, sizeof(gone_link), "paygate-chan.%ld.cccccc", (long)dead);
    snprintf(gone_sym, sizeof(gone_sym), "paygate-chan.%ld.dddddd", (long)dead);
    snprintf(mine, sizeof(mine), "paygate-chan.%ld.eeeeee", (long)getpid());
    put_file(tmp, gone1, "swiftpass.1.1.so");
    put_file(tmp, gone1, "mybank.1.2.so");
    put_file(tmp, gone2, NULL);                  /* empty */
    put_file(tmp, gone_link, "alipay.1.1.so");   /* plus a symlink: not removed whole */
    snprintf(name, sizeof(name), "%s/%s/link", tmp, gone_link);
    assert_int_equal(symlink("/etc/passwd", name), 0);
    put_file(tmp, "elsewhere", "keep.so");       /* a directory named like ours that is a symlink */
    snprintf(name, sizeof(name), "%s/%s", tmp, gone_sym);
    char target[PATH_MAX + 16];
    snprintf(target, sizeof(target), "%s/elsewhere", tmp);
    assert_int_equal(symlink(target, name), 0);
    put_file(tmp, mine, "swiftpass.1.1.so");     /* this process's */
    put_file(tmp, "paygate-chan.1.ffffff", "swiftpass.1.1.so"); /* pid 1 is alive */
    put_file(tmp, "paygate-chan.Xy12Zq", "swiftpass.1.1.so");   /* no pid in the name */

    gw_chan_sweep_stale();
    assert_false(exists(tmp, gone1));
    assert_false(exists(tmp, gone2));
    assert_true(exists(tmp, gone_link));
    assert_true(exists(tmp, gone_sym));
    snprintf(name, sizeof(name), "%s/elsewhere/keep.so", tmp);
    assert_int_equal(access(name, F_OK), 0); /* not followed */
    assert_true(exists(tmp, mine));
    assert_true(exists(tmp, "paygate-chan.1.ffffff"));
    assert_true(exists(tmp, "paygate-chan.Xy12Zq"));

    /* a registry sweeps when it is made, and names its own directory by pid */
    put_file(tmp, gone1, "swiftpass.1.1.so");
    uv_loop_t loop;
    uv_loop_init(&loop);
    gw_chan_registry_t *r = gw_chan_registry_new(&loop, tmp, NULL, 1000);
    assert_non_null(r);
    assert_false(exists(tmp, gone1));
    snprintf(name, sizeof(name), "%s/paygate-chan.%ld.", tmp, (long)getpid());
    assert_int_equal(strncmp(gw_chan_private_dir(r), name, strlen(name)), 0);
    gw_chan_registry_free(r);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    if (old_tmp[0]) setenv("TMPDIR", old_tmp, 1);
    else unsetenv("TMPDIR");
}

static void on_wait(uv_timer_t *t)
{
    uv_close((uv_handle_t *)t, NULL);
}

static void test_drain_timer(void **state)
{
    (void)state;
    env_t e;
    env_open(&e, "drain", 20);
    char p[PATH_MAX];
    path_in(p, sizeof(p), e.dir, "mock.so");
    copy_file(MOCK_SO, p, 0755);
    assert_int_equal(gw_chan_reload(e.r), GW_OK);
    gw_chan_module_t *m1 = gw_chan_acquire(e.r, "mock");
    assert_int_equal(gw_chan_reload(e.r), GW_OK);
    assert_int_equal(gw_chan_draining(e.r), 1);
    uv_timer_t wait;
    uv_timer_init(&e.loop, &wait);
    uv_timer_start(&wait, on_wait, 150, 0);
    capture_begin();
    uv_run(&e.loop, UV_RUN_DEFAULT);
    char *log = capture_end();
    assert_non_null(strstr(log, "generation 1 superseded"));
    assert_non_null(strstr(log, "still pinned by 1 call(s): mock 1.0.0 (1 in flight)"));
    assert_null(strstr(log, "fini")); /* not freed under the caller */
    free(log);
    assert_ack(m1, "ok v1.0.0");
    gw_chan_release(m1);
    assert_int_equal(gw_chan_draining(e.r), 0);
    env_close(&e);
}

/* ------------------------------------------------------------------ */
/* operator CLI */

typedef struct {
    int status;
    char *out, *err;
} ctl_result_t;

static ctl_result_t ctl(const char *const *args)
{
    ctl_result_t r;
    size_t on = 0, en = 0;
    FILE *out = open_memstream(&r.out, &on), *err = open_memstream(&r.err, &en);
    int argc = 0;
    while (args[argc]) argc++;
    r.status = gw_ctl_run(argc, (char **)args, out, err);
    fclose(out);
    fclose(err);
    return r;
}

static void ctl_free(ctl_result_t *r)
{
    free(r->out);
    free(r->err);
}

static void test_ctl_check(void **state)
{
    (void)state;
    const char *settings = "{\"gateway_url\":\"http://127.0.0.1:1\"}";
    ctl_result_t r = ctl((const char *[]){ "channel", "check", "--module", MOCK_SO, "--settings",
                                           settings, NULL });
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "OK\n"));
    assert_non_null(strstr(r.out, "name:             mock\n"));
    assert_non_null(strstr(r.out, "version:          1.0.0\n"));
    assert_non_null(strstr(r.out, "abi:              " ABI_NOW "\n"));
    assert_non_null(strstr(r.out, "methods:          wechat_qr alipay_qr barcode\n"));
    ctl_free(&r);

    /* init needs gateway_url */
    r = ctl((const char *[]){ "channel", "check", "--module", MOCK_SO, NULL });
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.out, "REJECTED: channel \"mock.so\": init failed: settings.gateway_url "
                                  "must be an http(s) URL (GW_EINVAL)"));
    ctl_free(&r);

    r = ctl((const char *[]){ "channel", "check", "--module", TEST_CHANNELS "/bad_major.so", NULL });
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.out, "REJECTED: channel \"bad_major.so\": ABI major 2 instead of 1"));
    ctl_free(&r);

    r = ctl((const char *[]){ "channel", "check", "--module", "/nonexistent/x.so", NULL });
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.out, "REJECTED: channel \"x.so\": No such file"));
    ctl_free(&r);

    r = ctl((const char *[]){ "channel", "help", NULL });
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "usage: paygated channel check"));
    ctl_free(&r);

    /* usage errors */
    const char *const *usages[] = {
        (const char *[]){ "channel", NULL },
        (const char *[]){ "channel", "check", NULL },
        (const char *[]){ "channel", "frobnicate", "--module", MOCK_SO, NULL },
        (const char *[]){ "channel", "check", "--module", MOCK_SO, "--bogus", "1", NULL },
        (const char *[]){ "channel", "check", "--module", NULL },
        (const char *[]){ "channel", "check", "--module", MOCK_SO, "--settings", "[1]", NULL },
        (const char *[]){ "channel", "build", "--module", MOCK_SO, "--op", "pay", NULL },
    };
    for (size_t i = 0; i < GW_ARRAY_SIZE(usages); i++) {
        r = ctl(usages[i]);
        assert_int_equal(r.status, 2);
        assert_non_null(strstr(r.err, "usage") ? r.err : strstr(r.err, "paygated channel"));
        ctl_free(&r);
    }
}

static void test_ctl_notify_verify(void **state)
{
    (void)state;
    char keyfile[320], merch[320], req[320], settings[320], text[2048];
    snprintf(keyfile, sizeof(keyfile), "%s/mch.key", base);
    write_text(keyfile, KEY);
    snprintf(merch, sizeof(merch), "%s/merchant.json", base);
    snprintf(text, sizeof(text), "{\"mch_id\":\"M100\",\"key\":\"@%s\",\"extra\":{\"a\":1}}", keyfile);
    write_text(merch, text);
    snprintf(settings, sizeof(settings), "%s/settings.json", base);
    write_text(settings, "{\"gateway_url\":\"http://127.0.0.1:1\"}");
    char merch_arg[330], settings_arg[330];
    snprintf(merch_arg, sizeof(merch_arg), "@%s", merch);
    snprintf(settings_arg, sizeof(settings_arg), "@%s", settings);
    snprintf(req, sizeof(req), "%s/notify.http", base);

    for (int variant = 0; variant < 3; variant++) {
        int broken = variant == 1;
        char *body = mock_signed_json(NOTE_FIELDS, NOTE_SIGNED, broken);
        if (variant < 2) /* LF-only line ends, a trailing newline beyond Content-Length */
            snprintf(text, sizeof(text),
                     "POST /notify/mock?x=1 HTTP/1.1\nHost: gw\nContent-Type: application/json\n"
                     "Content-Length: %zu\n\n%s\n", strlen(body), body);
        else /* CRLF, as captured off the wire, with junk beyond Content-Length: the
              * header names must be read whole for the body to be cut right */
            snprintf(text, sizeof(text),
                     "POST /notify/mock?x=1 HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%sJUNK", strlen(body), body);
        write_text(req, text);
        free(body);
        ctl_result_t r = ctl((const char *[]){ "channel", "notify-verify", "--module", MOCK_SO,
                                               "--settings", settings_arg, "--merchant", merch_arg,
                                               req, NULL });
        assert_null(strstr(r.out, KEY));
        assert_non_null(strstr(r.out, "module:           mock 1.0.0 (mock.so, ABI " ABI_NOW ")\n"));
        assert_non_null(strstr(r.out, "sign_string:      amount=100&kind=pay&mch_id=M100&"
                                      "out_trade_no=T1&status=SUCCESS&trade_no=W1\n"));
        assert_non_null(strstr(r.out, "kind:             pay\n"));
        assert_non_null(strstr(r.out, "mch_id:           M100\n"));
        assert_non_null(strstr(r.out, "out_trade_no:     T1\n"));
        if (!broken) {
            assert_int_equal(r.status, 0);
            assert_non_null(strstr(r.out, "verdict:          VERIFIED\n"));
            assert_non_null(strstr(r.out, "status:           SUCCESS\n"));
            assert_non_null(strstr(r.out, "amount:           100\n"));
            assert_non_null(strstr(r.out, "channel_trade_no: W1\n"));
            assert_non_null(strstr(r.out, "ack:              200 text/plain\n"));
            assert_non_null(strstr(r.out, "ack_body:         ok v1.0.0\n"));
        } else {
            assert_int_equal(r.status, 1);
            assert_non_null(strstr(r.out, "verdict:          REJECTED: signature verification "
                                          "failed (GW_ESIGN)\n"));
            assert_non_null(strstr(r.out, "ack:              400 text/plain\n"));
            assert_non_null(strstr(r.out, "ack_body:         fail\n"));
        }
        ctl_free(&r);
    }
    /* malformed notification: rejected by notify_parse */
    write_text(req, "POST /notify/mock HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{\"x\":1}");
    ctl_result_t r = ctl((const char *[]){ "channel", "notify-verify", "--module", MOCK_SO,
                                           "--settings", settings_arg, "--merchant", merch_arg, req,
                                           NULL });
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.out, "REJECTED: notify_parse: malformed input (GW_EPARSE)"));
    ctl_free(&r);
    /* not an HTTP request; unknown merchant key */
    write_text(req, "{\"kind\":\"pay\"}");
    r = ctl((const char *[]){ "channel", "notify-verify", "--module", MOCK_SO, "--settings",
                              settings_arg, "--merchant", merch_arg, req, NULL });
    assert_int_equal(r.status, 2);
    ctl_free(&r);
    write_text(req, "POST / HTTP/1.1\n\n{}");
    r = ctl((const char *[]){ "channel", "notify-verify", "--module", MOCK_SO, "--settings",
                              settings_arg, "--merchant", "{\"mch\":\"x\"}", req, NULL });
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "unknown key \"mch\""));
    ctl_free(&r);
}

static void test_ctl_build(void **state)
{
    (void)state;
    const char *settings = "{\"gateway_url\":\"http://127.0.0.1:1\",\"version_tag\":\"cli\"}";
    const char *merch = "{\"mch_id\":\"M100\",\"key\":\"" KEY "\"}";
    /* the key in the subject shows the redaction */
    const char *order = "{\"out_trade_no\":\"T1\",\"amount\":100,\"subject\":\"x " KEY " y\","
                        "\"method\":\"barcode\",\"auth_code\":\"134567890123456789\"}";
    ctl_result_t r = ctl((const char *[]){ "channel", "build", "--module", MOCK_SO, "--settings",
                                           settings, "--merchant", merch, "--op", "pay", "--order",
                                           order, NULL });
    assert_int_equal(r.status, 0);
    assert_null(strstr(r.out, KEY));
    assert_non_null(strstr(r.out, "op:               pay\n"));
    assert_non_null(strstr(r.out, "method:           POST\n"));
    assert_non_null(strstr(r.out, "url:              http://127.0.0.1:1/pay\n"));
    assert_non_null(strstr(r.out, "  Content-Type: application/json\n"));
    assert_non_null(strstr(r.out, "  X-Mock-Signature: "));
    assert_non_null(strstr(r.out, "  X-Mock-Tag: cli\n"));
    assert_non_null(strstr(r.out, "\"subject\":\"x <redacted> y\""));
    assert_non_null(strstr(r.out, "\"method\":16"));
    assert_non_null(strstr(r.out, "\"auth_code\":\"134567890123456789\""));
    assert_non_null(strstr(r.out, "sign_string ("));
    ctl_free(&r);

    const char *refund = "{\"out_refund_no\":\"R1\",\"amount\":40,\"total_amount\":100}";
    r = ctl((const char *[]){ "channel", "build", "--module", MOCK_SO, "--settings", settings,
                              "--merchant", merch, "--op", "refund-query", "--order",
                              "{\"out_trade_no\":\"T1\"}", "--refund", refund, NULL });
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "url:              http://127.0.0.1:1/refund-query\n"));
    assert_non_null(strstr(r.out, "\"out_refund_no\":\"R1\""));
    ctl_free(&r);

    r = ctl((const char *[]){ "channel", "build", "--module", MOCK_SO, "--settings", settings,
                              "--merchant", merch, "--op", "reverse", "--order",
                              "{\"out_trade_no\":\"T1\"}", NULL });
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "url:              http://127.0.0.1:1/reverse\n"));
    ctl_free(&r);

    /* the module refuses (no key) */
    r = ctl((const char *[]){ "channel", "build", "--module", MOCK_SO, "--settings", settings,
                              "--merchant", "{\"mch_id\":\"M100\"}", "--op", "close", "--order",
                              "{\"out_trade_no\":\"T1\"}", NULL });
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.out, "REFUSED: invalid key (GW_EKEY)"));
    ctl_free(&r);

    /* usage: refund without --refund, unknown order key, bad method */
    const char *const *usages[] = {
        (const char *[]){ "channel", "build", "--module", MOCK_SO, "--merchant", "{}", "--op",
                          "refund", "--order", "{}", NULL },
        (const char *[]){ "channel", "build", "--module", MOCK_SO, "--merchant", "{}", "--op", "pay",
                          "--order", "{\"out_trade\":\"T1\"}", NULL },
        (const char *[]){ "channel", "build", "--module", MOCK_SO, "--merchant", "{}", "--op", "pay",
                          "--order", "{\"method\":\"cash\"}", NULL },
        (const char *[]){ "channel", "build", "--module", MOCK_SO, "--merchant", "{}", "--op",
                          "refund", "--order", "{}", "--refund", "{\"amount\":\"1\"}", NULL },
        (const char *[]){ "channel", "build", "--module", MOCK_SO, "--merchant", "{}", "--op", "pay",
                          "--order", "@/nonexistent/order.json", NULL },
    };
    for (size_t i = 0; i < GW_ARRAY_SIZE(usages); i++) {
        r = ctl(usages[i]);
        if (r.status != 2) fail_msg("usage case %zu: status %d, out %s", i, r.status, r.out);
        ctl_free(&r);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sweep_stale),
        cmocka_unit_test(test_host_table),
        cmocka_unit_test(test_host_nonce_pool),
        cmocka_unit_test(test_host_xml_parse),
        cmocka_unit_test(test_host_xml_reject),
        cmocka_unit_test(test_host_xml_fast_matches_libxml),
        cmocka_unit_test(test_host_xml_roundtrip),
        cmocka_unit_test(test_host_sign_string),
        cmocka_unit_test(test_host_form),
        cmocka_unit_test(test_host_header_get),
        cmocka_unit_test(test_host_json),
        cmocka_unit_test(test_host_rsa_cache),
        cmocka_unit_test(test_host_log_tag),
        cmocka_unit_test(test_load_acquire),
        cmocka_unit_test(test_hot_reload),
        cmocka_unit_test(test_older_minor),
        cmocka_unit_test(test_bad_update_keeps_previous),
        cmocka_unit_test(test_bad_modules),
        cmocka_unit_test(test_removed_file),
        cmocka_unit_test(test_unreadable_dir),
        cmocka_unit_test(test_drain_timer),
        cmocka_unit_test(test_ctl_check),
        cmocka_unit_test(test_ctl_notify_verify),
        cmocka_unit_test(test_ctl_build),
    };
    return cmocka_run_group_tests_name("channel", tests, group_setup, group_teardown);
}
