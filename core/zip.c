/*
 * zip.c — zip archives (Alipay's bill), read with zlib: the end-of-central-
 * directory record, the central directory, each entry's local header, raw
 * inflate.  Every size is checked against the archive and a hard cap before
 * anything is allocated or inflated: a truncated archive, an oversized entry
 * or one that inflates beyond its declared size (a zip bomb) is refused.
 *
 * Names without the UTF-8 flag are read as GBK, the way Alipay writes them;
 * the same conversion (gw__gbk_to_utf8) serves the bill parser for the
 * entry's text.
 */
#include "zip.h"

#include <errno.h>
#include <iconv.h>
#include <stdio.h>
#include <stdlib.h>
#include <zlib.h>

#define ZIP_MAX_ENTRIES 64
#define ZIP_MAX_ENTRY_BYTES (64u << 20) /* uncompressed, per entry */

static uint32_t rd16(const unsigned char *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static uint32_t rd32(const unsigned char *p) { return rd16(p) | rd16(p + 2) << 16; }

/* The end-of-central-directory record: the last "PK\5\6" whose comment
 * ends the archive.  Gives the central directory's offset and entry count. */
static gw_err_t zip_eocd(const unsigned char *z, size_t len, uint32_t *cd_off, uint32_t *count, char *err,
                         size_t errlen)
{
    size_t lowest = len > 22 + 65535 ? len - 22 - 65535 : 0;
    for (size_t i = len >= 22 ? len - 22 + 1 : 0; i-- > lowest;) {
        if (memcmp(z + i, "PK\5\6", 4) != 0 || i + 22 + rd16(z + i + 20) != len) continue;
        uint32_t size = rd32(z + i + 12), off = rd32(z + i + 16);
        *count = rd16(z + i + 10);
        if (rd16(z + i + 4) != 0 || rd16(z + i + 6) != 0 || *count != rd16(z + i + 8)) {
            snprintf(err, errlen, "a multi-part zip archive is not supported");
            return GW_EPARSE;
        }
        if (*count == 0xFFFF || off == 0xFFFFFFFFu || size == 0xFFFFFFFFu) {
            snprintf(err, errlen, "a ZIP64 archive is not supported");
            return GW_EPARSE;
        }
        if ((uint64_t)off + size > i) {
            snprintf(err, errlen, "the zip's central directory lies outside the archive: truncated or corrupt");
            return GW_EPARSE;
        }
        *cd_off = off;
        return GW_OK;
    }
    snprintf(err, errlen, "no zip end-of-central-directory record: a truncated or corrupt archive");
    return GW_EPARSE;
}

/* The central-directory entry at *pos (advanced past it). */
static gw_err_t zip_entry(const unsigned char *z, size_t len, size_t *pos, gw__zip_entry_t *e, char *err,
                          size_t errlen)
{
    size_t p = *pos;
    if (p + 46 > len || memcmp(z + p, "PK\1\2", 4) != 0) {
        snprintf(err, errlen, "a corrupt zip central directory (entry at %zu)", p);
        return GW_EPARSE;
    }
    size_t nlen = rd16(z + p + 28), xlen = rd16(z + p + 30), clen = rd16(z + p + 32);
    if (p + 46 + nlen + xlen + clen > len) {
        snprintf(err, errlen, "a corrupt zip central directory (entry at %zu)", p);
        return GW_EPARSE;
    }
    e->flags = rd16(z + p + 8);
    e->method = rd16(z + p + 10);
    e->crc = rd32(z + p + 16);
    e->csize = rd32(z + p + 20);
    e->usize = rd32(z + p + 24);
    e->local = rd32(z + p + 42);
    e->name[0] = '\0';
    const char *raw = (const char *)z + p + 46;
    char *u = NULL;
    size_t ulen = 0;
    char ignored[64];
    if (e->flags & 0x800) { /* the UTF-8 flag: the name is UTF-8 already */
        snprintf(e->name, sizeof(e->name), "%.*s", (int)nlen, raw);
    } else if (gw__gbk_to_utf8(raw, nlen, &u, &ulen, ignored, sizeof(ignored)) == GW_OK) {
        snprintf(e->name, sizeof(e->name), "%.*s", (int)ulen, u); /* Alipay: GBK, no flag */
    }
    free(u);
    *pos = p + 46 + nlen + xlen + clen;
    return GW_OK;
}

static int str_ends(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

gw_err_t gw__zip_find(const unsigned char *z, size_t len, const char *want, const char *unless,
                      gw__zip_entry_t *found, char *err, size_t errlen)
{
    uint32_t cd, count;
    gw_err_t rc = zip_eocd(z, len, &cd, &count, err, errlen);
    if (rc != GW_OK) return rc;
    if (count > ZIP_MAX_ENTRIES) {
        snprintf(err, errlen, "the zip has %u entries (at most %d)", count, ZIP_MAX_ENTRIES);
        return GW_EPARSE;
    }
    int hits = 0;
    size_t pos = cd;
    for (uint32_t i = 0; i < count; i++) {
        gw__zip_entry_t e;
        if ((rc = zip_entry(z, len, &pos, &e, err, errlen)) != GW_OK) return rc;
        if (!str_ends(e.name, ".csv") || !strstr(e.name, want) || strstr(e.name, unless)) continue;
        *found = e;
        hits++;
    }
    if (hits != 1) {
        snprintf(err, errlen, "the zip holds %s CSV file named …%s.csv (it must hold exactly one)",
                 hits ? "more than one" : "no", want);
        return GW_EPARSE;
    }
    return GW_OK;
}

gw_err_t gw__zip_read(const unsigned char *z, size_t len, const gw__zip_entry_t *e, char **out,
                      size_t *outlen, char *err, size_t errlen)
{
    if (e->flags & 1) {
        snprintf(err, errlen, "zip entry %s is encrypted", e->name);
        return GW_EPARSE;
    }
    if (e->method != 0 && e->method != 8) {
        snprintf(err, errlen, "zip entry %s uses compression method %u (only stored and deflate)", e->name,
                 e->method);
        return GW_EPARSE;
    }
    if (e->usize > ZIP_MAX_ENTRY_BYTES || (e->method == 0 && e->csize != e->usize)) {
        snprintf(err, errlen, "zip entry %s declares %u bytes uncompressed (at most %u): refused", e->name,
                 e->usize, ZIP_MAX_ENTRY_BYTES);
        return GW_EPARSE;
    }
    size_t p = e->local;
    if (p + 30 > len || memcmp(z + p, "PK\3\4", 4) != 0) {
        snprintf(err, errlen, "zip entry %s: no local header where the directory says", e->name);
        return GW_EPARSE;
    }
    size_t data = p + 30 + rd16(z + p + 26) + rd16(z + p + 28);
    if (data > len || e->csize > len - data) {
        snprintf(err, errlen, "zip entry %s: its data runs past the end of the archive (truncated)", e->name);
        return GW_EPARSE;
    }
    char *buf = malloc((size_t)e->usize + 1);
    if (buf == NULL) {
        snprintf(err, errlen, "out of memory");
        return GW_ENOMEM;
    }
    size_t got = e->csize;
    int ok = 1;
    if (e->method == 0) {
        memcpy(buf, z + data, e->csize);
    } else {
        z_stream s;
        memset(&s, 0, sizeof(s));
        s.next_in = (Bytef *)(uintptr_t)(z + data);
        s.avail_in = e->csize;
        s.next_out = (Bytef *)buf;
        s.avail_out = e->usize + 1; /* one byte more than declared: catches an overrun */
        ok = inflateInit2(&s, -MAX_WBITS) == Z_OK;
        int zr = ok ? inflate(&s, Z_FINISH) : Z_MEM_ERROR;
        const char *zmsg = s.msg; /* a static string of zlib's */
        got = s.total_out;
        if (ok) inflateEnd(&s);
        if (got > e->usize) {
            snprintf(err, errlen, "zip entry %s inflates beyond its declared %u bytes: refused", e->name, e->usize);
            ok = 0;
        } else if (zr != Z_STREAM_END) {
            snprintf(err, errlen, "zip entry %s: corrupt or truncated deflate data (%s)", e->name,
                     zmsg ? zmsg : "incomplete");
            ok = 0;
        }
    }
    if (ok && (got != e->usize || crc32(0L, (const Bytef *)buf, (uInt)got) != e->crc)) {
        snprintf(err, errlen, "zip entry %s: size or CRC-32 does not match the directory: corrupt", e->name);
        ok = 0;
    }
    if (!ok) {
        free(buf);
        return GW_EPARSE;
    }
    *out = buf;
    *outlen = got;
    return GW_OK;
}

/* GBK bytes → UTF-8 with iconv.  Read as GB18030, GBK's superset: every
 * GBK text reads the same, and a rare character beyond GBK (a four-byte
 * sequence, say in a buyer's name) does not make the whole bill unreadable. */
gw_err_t gw__gbk_to_utf8(const char *in, size_t n, char **out, size_t *outlen, char *err, size_t errlen)
{
    iconv_t cd = iconv_open("UTF-8", "GB18030");
    if (cd == (iconv_t)-1) {
        snprintf(err, errlen, "iconv cannot convert GBK: %s", strerror(errno));
        return GW_EIO;
    }
    size_t cap = 2 * n + 1; /* 1, 2 or 4 bytes of GB18030 are at most 1, 3 or 4 of UTF-8 */
    char *buf = malloc(cap);
    gw_err_t rc = GW_OK;
    if (buf == NULL) {
        snprintf(err, errlen, "out of memory");
        rc = GW_ENOMEM;
    } else {
        char *ip = (char *)(uintptr_t)in, *op = buf;
        size_t il = n, ol = cap - 1;
        if (iconv(cd, &ip, &il, &op, &ol) == (size_t)-1) {
            snprintf(err, errlen, "not GBK text (byte %zu): %s", (size_t)(ip - in), strerror(errno));
            rc = GW_EPARSE;
        }
        *op = '\0';
        *outlen = (size_t)(op - buf);
    }
    iconv_close(cd);
    if (rc != GW_OK) {
        free(buf);
        return rc;
    }
    *out = buf;
    return GW_OK;
}
