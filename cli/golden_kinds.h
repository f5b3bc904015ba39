/*
 * golden_kinds.h — recompute functions of the golden fixture kinds (golden_kinds.c), used by cmd_golden.c.
 */
#ifndef TRELLIS_GOLDEN_KINDS_H
#define TRELLIS_GOLDEN_KINDS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* One file a fixture must hold: path relative to the golden folder, role, bytes. */
typedef struct product {
    char *rel;
    const char *role;           /* "input", "expected", "model", "data" (static strings) */
    uint8_t *data;
    size_t size;
} product;

typedef struct products {
    product *v;
    size_t n, cap;
} products;

int products_put(products *p, const char *rel, const char *role, const void *data, size_t size);
void products_free(products *p);

typedef struct golden_ctx {
    const char *dir;            /* golden folder */
    json_t *fixture;            /* the index entry */
    json_t *params;
    int regenerate;             /* generated_by "ref": rebuild inputs too */
    int generating;             /* `golden gen` (files may not exist yet) rather than `golden verify` */
} golden_ctx;

int golden_is_ref(json_t *fixture);

/* Each returns TR_OK and fills out, or a status with a reason in why. */
int golden_lut(const golden_ctx *g, products *out, char *why, size_t whylen);
int golden_grid(const golden_ctx *g, products *out, char *why, size_t whylen);
int golden_conversion(const golden_ctx *g, products *out, char *why, size_t whylen);
int golden_packing(const golden_ctx *g, products *out, char *why, size_t whylen);
int golden_hadamard(const golden_ctx *g, products *out, char *why, size_t whylen);
int golden_bitstream(const golden_ctx *g, products *out, char *why, size_t whylen);
int golden_checkpoint(const golden_ctx *g, products *out, char *why, size_t whylen);
int golden_op(const golden_ctx *g, products *out, char *why, size_t whylen);

#endif
