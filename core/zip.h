/*
 * zip.h — a reader for the zip archives a channel serves its bill in
 * (Alipay's trade bill; see zip.c), and the GBK → UTF-8 conversion those
 * archives need.  Internal to the core (gw__): bill.c is the user.
 *
 * The archive is a borrowed buffer, never modified.  Every size is checked
 * against the archive and a hard cap before anything is allocated or
 * inflated.  Errors are GW_EPARSE (the archive is refused; err says why),
 * GW_ENOMEM, or GW_EIO (iconv cannot convert GBK); err is always set then.
 */
#ifndef GW_ZIP_H
#define GW_ZIP_H

#include "gw.h"

typedef struct {
    char name[256]; /* UTF-8 (a name without the UTF-8 flag is read as GBK) */
    unsigned flags, method;
    uint32_t crc, csize, usize, local;
} gw__zip_entry_t;

/* The one entry whose name holds `want` and ends in ".csv", but not
 * `unless`: GW_EPARSE when there is none or more than one. */
gw_err_t gw__zip_find(const unsigned char *z, size_t len, const char *want, const char *unless,
                      gw__zip_entry_t *found, char *err, size_t errlen);

/* The bytes of entry e, inflated and CRC-checked; *out is malloc'ed (the
 * caller frees it), *outlen bytes long. */
gw_err_t gw__zip_read(const unsigned char *z, size_t len, const gw__zip_entry_t *e, char **out,
                      size_t *outlen, char *err, size_t errlen);

/* GBK bytes → UTF-8 (read as GB18030, GBK's superset); *out is malloc'ed
 * and NUL-terminated, *outlen bytes before the NUL. */
gw_err_t gw__gbk_to_utf8(const char *in, size_t n, char **out, size_t *outlen, char *err, size_t errlen);

#endif
