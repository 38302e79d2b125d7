/* migrations.h — schema migrations embedded in the binary (storage/embed.sh). */
#ifndef GW_MIGRATIONS_H
#define GW_MIGRATIONS_H

typedef struct gw_migration {
    int version;      /* from the file name NNNN_… */
    const char *name; /* file name without .sql */
    const char *sql;  /* run in one transaction */
} gw_migration_t;

/* Sorted by version; terminated by an entry with version 0. */
extern const gw_migration_t gw_migrations[];

#endif
