/*
 * tests.h — the libcheck suites of the harness (one per module) and small shared test helpers.
 */
#ifndef TRELLIS_TESTS_H
#define TRELLIS_TESTS_H

#include <check.h>
#include <stddef.h>
#include <stdint.h>

#define TR_SUITES(X) \
    X(status)        \
    X(fp16)          \
    X(safetensors)   \
    X(pack)          \
    X(codebook)      \
    X(dequant)       \
    X(checkpoint)    \
    X(cov_checkpoint) \
    X(corpus)        \
    X(cli)           \
    X(cpu_gemv)      \
    X(moe_select)    \
    X(moe_dispatch)  \
    X(nan_guard)     \
    X(symbols)       \
    X(registry)      \
    X(cov_registry)  \
    X(cov_ops)       \
    X(cov_moe)       \
    X(conform)       \
    X(quantize)      \
    X(engine)        \
    X(oracle)        \
    X(qengine)       \
    X(eval)          \
    X(tokenizer)     \
    X(kld)           \
    X(chat)          \
    X(report)        \
    X(metal_emu)     \
    X(metal_conform) \
    X(metal_kernels)

#define TR_DECLARE_SUITE_(name) Suite *suite_##name(void);
TR_SUITES(TR_DECLARE_SUITE_)
#undef TR_DECLARE_SUITE_

/* 1 when the suite runs under valgrind (make valgrind sets TR_UNDER_VALGRIND): heavy loops shrink. */
int tr_test_under_valgrind(void);
/* 1 when TR_LONG_TESTS is set (make check-long). */
int tr_test_long(void);
/* A fresh empty directory under $TMPDIR (or /tmp), removed at exit of the test process.  Returns its path. */
const char *tr_test_tmpdir(void);
/* Write bytes to dir/name; returns the full path (static buffer rotated over 8 slots). */
const char *tr_test_write(const char *dir, const char *name, const void *data, size_t size);
/* Build a safetensors file image from a header string and a data buffer (N = strlen(header)). Caller frees. */
uint8_t *tr_test_st_image(const char *header, const void *data, size_t data_size, size_t *out_size);

#endif
