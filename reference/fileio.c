/*
 * fileio.c — read-only mmap, whole-file reads and writes, path helpers.
 */
#include "trellis/fileio.h"
#include "trellis/alloc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int tr_file_map(const char *path, tr_mapped *out, tr_error *err)
{
    out->data = NULL;
    out->size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return tr_fail(err, TR_E_IO, path, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return tr_fail(err, TR_E_IO, path, "not a regular file");
    }
    if (st.st_size == 0) {
        close(fd);
        return TR_OK;
    }
    void *p = tr_alloc_should_fail() ? MAP_FAILED
                                     : mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return tr_fail(err, TR_E_NOMEM, path, "cannot map %lld bytes", (long long)st.st_size);
    out->data = p;
    out->size = (size_t)st.st_size;
    return TR_OK;
}

void tr_file_unmap(tr_mapped *m)
{
    if (m->data)
        munmap((void *)m->data, m->size);
    m->data = NULL;
    m->size = 0;
}

int tr_file_read_all(const char *path, char **data, size_t *size, tr_error *err)
{
    *data = NULL;
    if (size)
        *size = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return tr_fail(err, TR_E_IO, path, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return tr_fail(err, TR_E_IO, path, "not a regular file");
    }
    size_t n = (size_t)st.st_size;
    char *buf = tr_malloc(n + 1);
    if (!buf) {
        fclose(f);
        return tr_fail(err, TR_E_NOMEM, path, "cannot allocate %zu bytes", n + 1);
    }
    size_t got = n ? fread(buf, 1, n, f) : 0;
    int bad = ferror(f);
    fclose(f);
    if (bad || got != n) {
        tr_dealloc(buf);
        return tr_fail(err, TR_E_IO, path, "read error");
    }
    buf[n] = '\0';
    *data = buf;
    if (size)
        *size = n;
    return TR_OK;
}

int tr_file_out_open(tr_file_out *o, const char *path, tr_error *err)
{
    o->path = path;
    o->err_no = 0;
    o->fp = fopen(path, "wb");
    if (!o->fp)
        return tr_fail(err, errno == ENOSPC ? TR_E_NOSPACE : TR_E_IO, path, "cannot create: %s", strerror(errno));
    return TR_OK;
}

void tr_file_out_put(tr_file_out *o, const void *data, size_t size)
{
    if (o->err_no || size == 0)
        return;
    if (fwrite(data, 1, size, o->fp) != size)
        o->err_no = errno ? errno : EIO;
}

int tr_file_out_close(tr_file_out *o, tr_error *err)
{
    if (fclose(o->fp) != 0 && !o->err_no)
        o->err_no = errno ? errno : EIO;
    o->fp = NULL;
    if (o->err_no)
        return tr_fail(err, o->err_no == ENOSPC ? TR_E_NOSPACE : TR_E_IO, o->path, "write failed: %s",
                       strerror(o->err_no));
    return TR_OK;
}

int tr_file_write_all(const char *path, const void *data, size_t size, tr_error *err)
{
    tr_file_out o;
    int rc = tr_file_out_open(&o, path, err);
    if (rc != TR_OK)
        return rc;
    tr_file_out_put(&o, data, size);
    return tr_file_out_close(&o, err);
}

int tr_path_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

int tr_path_is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int tr_path_is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

char *tr_path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    int slash = a > 0 && dir[a - 1] != '/';
    char *p = tr_malloc(a + (size_t)slash + b + 1);
    if (!p)
        return NULL;
    memcpy(p, dir, a);
    if (slash)
        p[a] = '/';
    memcpy(p + a + (size_t)slash, name, b + 1);
    return p;
}

int tr_mkdir_p(const char *path, tr_error *err)
{
    char *p = tr_strdup(path);
    if (!p)
        return tr_fail(err, TR_E_NOMEM, path, "cannot allocate path");
    for (char *s = p + 1;; s++) {
        if (*s == '/' || *s == '\0') {
            char c = *s;
            *s = '\0';
            if (mkdir(p, 0777) != 0 && errno != EEXIST) {
                int e = errno;
                tr_dealloc(p);
                return tr_fail(err, TR_E_IO, path, "cannot create directory: %s", strerror(e));
            }
            *s = c;
            if (c == '\0')
                break;
        }
    }
    tr_dealloc(p);
    if (!tr_path_is_dir(path))
        return tr_fail(err, TR_E_IO, path, "exists and is not a directory");
    return TR_OK;
}
