/*
 * kernel_symbols.h — the foreign Metal kernel symbols of KERNELS.md §4.1–§4.13 (metal_marlin) with the op each one
 * implements and the per-symbol facts the spec states (variant id, accumulation, adapter, declared domain, binding
 * family, launch), plus the unmapped names of §4.14.  Used by `trellis symbols` (MOE.md §5.5) and, later, by the
 * Metal runner's variant records (KERNELS.md §3).
 *
 * Facts are recorded as the spec's text (ASCII: "<=" for ≤, "ceil" for ⌈⌉).  Every Metal variant also declares
 * gs in {16, 32, 64, 128, 256} (KERNELS.md §3); that common rule is not repeated per symbol.
 */
#ifndef TRELLIS_KERNEL_SYMBOLS_H
#define TRELLIS_KERNEL_SYMBOLS_H

#include <stddef.h>

typedef struct tr_kernel_symbol {
    const char *name;          /* the Metal function name */
    const char *op;            /* registry op: "dequant_grid", "moe_swiglu", "router_topk+moe_group", "utility", … */
    const char *section;       /* "4.8" */
    const char *variant;       /* variant id where KERNELS.md names one ("fp32acc", "decode_G_U_D"), else NULL */
    const char *acc;           /* "f16", "f32", "data format", or NULL where the spec states none */
    const char *adapter;       /* "PK", "I16+NOSIGN", "STACK+H16", … or NULL */
    const char *domain;        /* declared domain / form, or NULL */
    const char *binding;       /* binding list, or NULL where the spec gives none */
    const char *launch;        /* launch geometry, or NULL */
    int probed;                /* a registered name whose availability is probed (KERNELS.md §4.4, §4.8) */
} tr_kernel_symbol;

/* Symbols in KERNELS.md order. */
size_t tr_kernel_symbol_count(void);
const tr_kernel_symbol *tr_kernel_symbol_at(size_t i);
/* The mapped symbol of that exact name, or NULL (unmapped or unknown). */
const tr_kernel_symbol *tr_kernel_symbol_find(const char *name);

/* KERNELS.md §4.14: names and name families that are reported as `unmapped`. */
typedef struct tr_unmapped_rule {
    const char *pattern;       /* exact name, or prefix when is_prefix */
    int is_prefix;             /* the spec writes it as "name*" or "name_*" */
    const char *family;        /* "FP4 op", "int8 op", … */
} tr_unmapped_rule;

size_t tr_unmapped_rule_count(void);
const tr_unmapped_rule *tr_unmapped_rule_at(size_t i);
/* The §4.14 family of name, or NULL when §4.14 does not list it (a mapped symbol or an unknown name). */
const char *tr_kernel_symbol_unmapped_family(const char *name);

#endif
