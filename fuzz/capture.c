/*
 * capture.c — fuzz target: the conformance capture reader behind `trellis conform --backend capture:DIR`
 * (HARNESS.md §3 "Capture directories"; cli/capture.c capture_read_manifest and capture_load_case, cli/conform.h).
 *
 * Once per process the target's temporary folder gets a capture layout with three small buffer files:
 *   in.bin                  16 bytes 0x00..0x0f
 *   out.bin                 64 guard bytes (0xdeadbeef LE), 16 bytes 0x10..0x1f, 64 guard bytes
 *   cases/000000/in_x.bin   4 bytes "TRLS"
 * (seed manifests carry their sha256).  Each input is written as manifest.json and read with
 * capture_read_manifest; when it is accepted every case entry (at most 256) is loaded with capture_load_case and
 * released exactly as conform_exec does (tr_bufs_free for inputs; for outputs each guarded block and buffer record,
 * with the caller's uint8_t *guarded[64]).
 * Checks: a refused manifest gives no document and a message with its code; a loaded case has at most 64 outputs,
 * every buffer's byte size equals numel · dtype size without overflow and the bytes of a file that exists and
 * matched its sha256, names that fit, and outputs that view the middle of their guarded block.
 */
#include "fuzz.h"
#include "../cli/conform.h"
#include "trellis/alloc.h"
#include "trellis/safetensors.h"

static char cap_dir[600], man_path[700];

static void setup(void)
{
    fuzz_path(cap_dir, sizeof cap_dir, fuzz_tmpdir("capture"), "cap");
    FUZZ_SETUP_CHECK(mkdir(cap_dir, 0700) == 0, "mkdir %s", cap_dir);
    char p[800];
    uint8_t in[16], out[144];
    for (int i = 0; i < 16; i++)
        in[i] = (uint8_t)i;
    for (int i = 0; i < 64; i += 4) {
        static const uint8_t pat[4] = {0xef, 0xbe, 0xad, 0xde};
        memcpy(out + i, pat, 4);
        memcpy(out + 80 + i, pat, 4);
    }
    for (int i = 0; i < 16; i++)
        out[64 + i] = (uint8_t)(0x10 + i);
    fuzz_path(p, sizeof p, cap_dir, "in.bin");
    fuzz_write_file(p, in, sizeof in);
    fuzz_path(p, sizeof p, cap_dir, "out.bin");
    fuzz_write_file(p, out, sizeof out);
    fuzz_path(p, sizeof p, cap_dir, "cases");
    FUZZ_SETUP_CHECK(mkdir(p, 0700) == 0, "mkdir %s", p);
    fuzz_path(p, sizeof p, cap_dir, "cases/000000");
    FUZZ_SETUP_CHECK(mkdir(p, 0700) == 0, "mkdir %s", p);
    fuzz_path(p, sizeof p, cap_dir, "cases/000000/in_x.bin");
    fuzz_write_file(p, "TRLS", 4);
    fuzz_path(man_path, sizeof man_path, cap_dir, "manifest.json");
}

static void check_buf(const tr_buf *b, const char *what)
{
    FUZZ_ASSERT(memchr(b->name, '\0', sizeof b->name) != NULL, "%s: name not terminated", what);
    FUZZ_ASSERT(b->ndim <= 4 && b->dtype < TR_DT_COUNT, "%s %s: ndim %u dtype %d", what, b->name, b->ndim,
                (int)b->dtype);
    uint64_t n = 1;
    for (unsigned d = 0; d < b->ndim; d++) {
        FUZZ_ASSERT(b->shape[d] == 0 || n <= UINT64_MAX / b->shape[d], "%s %s: numel overflows", what, b->name);
        n *= b->shape[d];
    }
    FUZZ_ASSERT(n <= UINT64_MAX / tr_dtype_size(b->dtype), "%s %s: byte size overflows", what, b->name);
    FUZZ_ASSERT(b->bytes == n * tr_dtype_size(b->dtype), "%s %s: %zu bytes for %llu elements of %s", what, b->name,
                b->bytes, (unsigned long long)n, tr_dtype_name(b->dtype));
    FUZZ_ASSERT(b->bytes <= 16, "%s %s: %zu bytes, larger than any buffer file of the folder", what, b->name,
                b->bytes);
    FUZZ_ASSERT(b->data != NULL, "%s %s: no data", what, b->name);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > FUZZ_MAX_INPUT)
        return 0;
    if (!cap_dir[0])
        setup();
    fuzz_write_file(man_path, data, size);
    json_t *m = (json_t *)1;
    tr_error err;
    tr_error_clear(&err);
    int rc = capture_read_manifest(cap_dir, &m, &err);
    if (rc != TR_OK) {
        FUZZ_ASSERT(m == NULL, "document on failure");
        FUZZ_ASSERT(err.code == rc && strstr(err.text, tr_status_name(rc)), "rc %d: %s", rc, err.text);
        return 0;
    }
    json_t *cases = json_object_get(m, "cases");
    FUZZ_ASSERT(json_is_array(cases), "cases");
    for (size_t i = 0; i < json_array_size(cases) && i < 256; i++) {
        tr_bufs in = {0}, got = {0};
        uint8_t *guarded[64] = {0};
        tr_error_clear(&err);
        rc = capture_load_case(cap_dir, json_array_get(cases, i), &in, &got, guarded, &err);
        if (rc == TR_OK) {
            FUZZ_ASSERT(got.n <= 64, "%d outputs", got.n);
            for (int k = 0; k < in.n; k++) {
                check_buf(in.v[k], "input");
                FUZZ_ASSERT(in.v[k]->role == TR_ROLE_INPUT, "role");
            }
            for (int k = 0; k < got.n; k++) {
                check_buf(got.v[k], "output");
                FUZZ_ASSERT(got.v[k]->role == TR_ROLE_OUTPUT && guarded[k] &&
                                got.v[k]->data == guarded[k] + CONFORM_GUARD_BYTES,
                            "output %d does not view its guarded block", k);
            }
        } else
            FUZZ_ASSERT(err.code == rc && strstr(err.text, tr_status_name(rc)), "load rc %d: %s", rc, err.text);
        /* release exactly as conform_exec does (tr_bufs_free(&in); free_got(&got, guarded)) */
        tr_bufs_free(&in);
        for (int k = 0; k < got.n; k++) {
            FUZZ_ASSERT(k < 64, "the loader left %d outputs for the caller's 64 guarded slots", got.n);
            tr_dealloc(guarded[k]);
            tr_dealloc(got.v[k]);
        }
        tr_dealloc(got.v);
    }
    json_decref(m);
    return 0;
}
