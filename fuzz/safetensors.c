/*
 * safetensors.c — fuzz target: the strict safetensors reader (FORMAT.md §2.6) on an in-memory image.
 *
 * The input is the whole file.  When tr_st_open_buffer accepts it, every accessor is exercised and every tensor is
 * read in full (tr_st_read_f32 for F32/F16/BF16, tr_st_copy_element for every element of the others), so ASan sees
 * any view that the validation let point outside the image.  Checks: a rejected file leaves the handle NULL with a
 * "<label>: <CODE>: …" message whose code is the return code; an accepted one has tensors that tile the data buffer
 * (rule 13), names that tr_st_find resolves to themselves, and F32 values that read back bit-exactly.
 */
#include "fuzz.h"
#include "trellis/alloc.h"
#include "trellis/safetensors.h"

#define LABEL "fuzz.safetensors"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > FUZZ_MAX_INPUT)
        return 0;
    /* A private copy: the reader must not need more than the bytes it was given (ASan bounds the copy exactly). */
    uint8_t *buf = malloc(size ? size : 1);
    FUZZ_SETUP_CHECK(buf != NULL, "out of memory");
    if (size)
        memcpy(buf, data, size);

    tr_st_file *f = (tr_st_file *)1;
    tr_error err;
    tr_error_clear(&err);
    int rc = tr_st_open_buffer(buf, size, LABEL, &f, &err);
    if (rc != TR_OK) {
        FUZZ_ASSERT(f == NULL, "handle set on failure");
        FUZZ_ASSERT(err.code == rc, "err.code %d, rc %d", err.code, rc);
        FUZZ_ASSERT(!strncmp(err.text, LABEL ": ", strlen(LABEL) + 2), "message: %s", err.text);
        FUZZ_ASSERT(strstr(err.text, tr_status_name(rc)) != NULL, "message lacks the code: %s", err.text);
        free(buf);
        return 0;
    }
    FUZZ_ASSERT(f != NULL, "no handle on success");
    FUZZ_ASSERT(!strcmp(tr_st_path(f), LABEL), "path %s", tr_st_path(f));
    uint64_t N = tr_st_header_size(f), D = tr_st_data_size(f);
    FUZZ_ASSERT(N >= 2 && 8 + N + D == size, "N %llu D %llu size %zu", (unsigned long long)N, (unsigned long long)D,
                size);

    for (size_t i = 0; i < tr_st_metadata_count(f); i++)
        FUZZ_ASSERT(tr_st_metadata_key(f, i) && tr_st_metadata_value(f, i), "metadata %zu", i);
    FUZZ_ASSERT(!tr_st_metadata_key(f, tr_st_metadata_count(f)), "metadata past the end");

    uint64_t bytes = 0;
    for (size_t i = 0; i < tr_st_count(f); i++) {
        const tr_st_tensor *t = tr_st_at(f, i);
        FUZZ_ASSERT(t && t->name && t->name[0], "tensor %zu", i);
        FUZZ_ASSERT(tr_st_find(f, t->name) == t, "tr_st_find(%s)", t->name);
        FUZZ_ASSERT(t->ndim <= TR_ST_MAX_DIMS && t->dtype < TR_DT_COUNT, "%s", t->name);
        size_t es = tr_dtype_size(t->dtype);
        FUZZ_ASSERT(t->begin <= t->end && t->end <= D && t->end - t->begin == t->numel * es, "%s offsets",
                    t->name);
        FUZZ_ASSERT(t->data == buf + 8 + N + t->begin, "%s data pointer", t->name);
        bytes += t->end - t->begin;
        if (t->dtype == TR_DT_F32 || t->dtype == TR_DT_F16 || t->dtype == TR_DT_BF16) {
            float *v = tr_malloc(t->numel ? t->numel * sizeof *v : 1);
            FUZZ_SETUP_CHECK(v != NULL, "out of memory");
            rc = tr_st_read_f32(f, t, v, &err);
            FUZZ_ASSERT(rc == TR_OK, "tr_st_read_f32(%s): %s", t->name, err.text);
            if (t->dtype == TR_DT_F32)
                FUZZ_ASSERT(t->numel == 0 || !memcmp(v, t->data, t->numel * 4), "%s: F32 not read bit-exactly",
                            t->name);
            tr_dealloc(v);
        } else {
            uint8_t el[8];
            for (uint64_t k = 0; k < t->numel; k++) {
                tr_st_copy_element(t, k, el);
                FUZZ_ASSERT(!memcmp(el, t->data + k * es, es), "%s element %llu", t->name, (unsigned long long)k);
            }
            float dummy;
            rc = tr_st_read_f32(f, t, &dummy, &err);   /* refused before writing anything */
            FUZZ_ASSERT(rc == TR_E_DTYPE, "tr_st_read_f32(%s) of dtype %s returned %d", t->name,
                        tr_dtype_name(t->dtype), rc);
        }
    }
    FUZZ_ASSERT(tr_st_at(f, tr_st_count(f)) == NULL, "tensor past the end");
    FUZZ_ASSERT(bytes == D, "tensors cover %llu of %llu data bytes", (unsigned long long)bytes,
                (unsigned long long)D);
    tr_st_close(f);
    free(buf);
    return 0;
}
