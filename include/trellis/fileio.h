/*
 * fileio.h — read-only file mapping and small-file helpers shared by every reader and writer.
 *
 * Weights are mapped read-only (HARNESS.md §9); small JSON files are read whole.  mmap counts as an allocation point
 * for failure injection (alloc.h).
 */
#ifndef TRELLIS_FILEIO_H
#define TRELLIS_FILEIO_H

#include "trellis/status.h"

#include <stddef.h>
#include <stdint.h>

typedef struct tr_mapped {
    const uint8_t *data;   /* NULL for an empty file */
    size_t size;
} tr_mapped;

/* Map path read-only.  TR_E_IO if it cannot be opened or is not a regular file, TR_E_NOMEM if mmap fails. */
int tr_file_map(const char *path, tr_mapped *out, tr_error *err);
void tr_file_unmap(tr_mapped *m);

/* Read a whole file into a NUL-terminated buffer (*size excludes the NUL).  Free with tr_dealloc. */
int tr_file_read_all(const char *path, char **data, size_t *size, tr_error *err);
/* Write size bytes to path (created or truncated).  TR_E_NOSPACE on ENOSPC, else TR_E_IO. */
int tr_file_write_all(const char *path, const void *data, size_t size, tr_error *err);

/* Streaming writer: errors are remembered and reported once by tr_file_out_close. */
typedef struct tr_file_out {
    void *fp;              /* FILE * */
    const char *path;
    int err_no;            /* first errno seen, 0 if none */
} tr_file_out;

int tr_file_out_open(tr_file_out *o, const char *path, tr_error *err);
void tr_file_out_put(tr_file_out *o, const void *data, size_t size);
/* Close; TR_E_NOSPACE on ENOSPC, TR_E_IO on any other error seen since open. */
int tr_file_out_close(tr_file_out *o, tr_error *err);

int tr_path_exists(const char *path);
int tr_path_is_dir(const char *path);
int tr_path_is_file(const char *path);
/* dir + "/" + name, allocated (NULL on allocation failure). */
char *tr_path_join(const char *dir, const char *name);
/* Create a directory (and missing parents); TR_OK if it exists already. */
int tr_mkdir_p(const char *path, tr_error *err);

#endif
