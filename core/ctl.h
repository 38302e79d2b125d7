/*
 * ctl.h — `paygated channel …`: operator commands for channel modules.
 *
 *   paygated channel help
 *   paygated channel check  --module FILE.so [--settings JSON|@file]
 *   paygated channel build  --module FILE.so [--settings …] --merchant JSON|@file
 *                           --op pay|query|refund|refund-query|close|reverse
 *                           --order JSON|@file [--refund JSON|@file]
 *   paygated channel notify-verify --module FILE.so [--settings …]
 *                           --merchant JSON|@file [REQUEST_FILE|-]
 *
 * Exit status: 0 success (module valid / request built / notification
 * verified), 1 rejected (module invalid / module refused / not verified),
 * 2 usage or input errors.  Key material is never printed: occurrences of
 * the merchant's key and private key in any output are replaced by
 * "<redacted>".  See docs/channels.md.
 */
#ifndef GW_CTL_H
#define GW_CTL_H

#include <stdio.h>

/* argv[0] is "channel" (main.c passes argc - 1, argv + 1 for
 * `paygated channel …`); output goes to stdout, diagnostics to stderr. */
int gw_ctl_main(int argc, char **argv);
/* The same with explicit streams (tests). */
int gw_ctl_run(int argc, char **argv, FILE *out, FILE *err);

#endif /* GW_CTL_H */
