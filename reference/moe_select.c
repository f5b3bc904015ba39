/*
 * moe_select.c — the MoE kernel selection policy of MOE.md §5: device profiles with their thresholds and tile
 * sizes, profile choice, the availability set, tr_select_moe_kernel (the §5.3 algorithm), recommend_kernel and
 * get_kernel_info (§5.4) and the list of every policy name (§5.5, for `trellis symbols`).
 */
#include "trellis/moe.h"
#include "trellis/alloc.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* ---- device profiles (§5.2) ------------------------------------------------------------------------------------- */

static const tr_moe_profile profiles[] = {
    /* name        decode prefill4 base large_min large_tile */
    {"M4 Max",     1,     16,      32,  33,       128},
    {"M3 Max",     1,     16,      32,  33,       128},
    {"M3 Pro",     1,     12,      24,  25,       96},
    {"M2 Ultra",   1,     16,      32,  33,       128},
    {"M2 Max",     1,     12,      24,  25,       96},
    {"M1 Max",     1,     8,       16,  17,       64},
};
#define PROFILE_COUNT (sizeof profiles / sizeof profiles[0])

size_t tr_moe_profile_count(void) { return PROFILE_COUNT; }

const tr_moe_profile *tr_moe_profile_at(size_t i) { return i < PROFILE_COUNT ? &profiles[i] : NULL; }

/* decode_max = 1 < prefill4_max < base_max and large_batch_min = base_max + 1 (§5.2). */
static int profile_check(const tr_moe_profile *p, tr_error *err)
{
    if (p->decode_max != 1)
        return tr_fail(err, TR_E_INTERNAL, p->name, "decode_max = %u, must be 1", p->decode_max);
    if (!(p->decode_max < p->prefill4_max && p->prefill4_max < p->base_max))
        return tr_fail(err, TR_E_INTERNAL, p->name, "thresholds %u < %u < %u do not increase", p->decode_max,
                       p->prefill4_max, p->base_max);
    if (p->large_batch_min != p->base_max + 1)
        return tr_fail(err, TR_E_INTERNAL, p->name, "large_batch_min = %u, must be base_max + 1 = %u",
                       p->large_batch_min, p->base_max + 1);
    return TR_OK;
}

int tr_moe_profiles_check(tr_error *err)
{
    for (size_t i = 0; i < PROFILE_COUNT; i++) {
        int rc = profile_check(&profiles[i], err);
        if (rc != TR_OK)
            return rc;
    }
    return TR_OK;
}

static const tr_moe_profile *default_profile(void) { return &profiles[0]; }

static int unknown_profile(const char *name, tr_error *err)
{
    char list[256] = "";
    for (size_t i = 0; i < PROFILE_COUNT; i++) {
        strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
        strncat(list, profiles[i].name, sizeof list - strlen(list) - 1);
    }
    return tr_fail(err, TR_E_INVALID_PARAM, "device_profile", "unknown profile \"%s\" (one of: %s)", name, list);
}

/* The first profile whose name is a substring of device, longest names tried first (ties in table order). */
static const tr_moe_profile *profile_in_device_name(const char *device)
{
    const tr_moe_profile *best = NULL;
    for (size_t i = 0; i < PROFILE_COUNT; i++)
        if (strstr(device, profiles[i].name) && (!best || strlen(profiles[i].name) > strlen(best->name)))
            best = &profiles[i];
    return best;
}

int tr_moe_profile_choose(const char *explicit_name, const char *device_name, const tr_moe_profile **out,
                          int *defaulted, tr_error *err)
{
    *defaulted = 0;
    if (explicit_name) {
        for (size_t i = 0; i < PROFILE_COUNT; i++)
            if (strcasecmp(explicit_name, profiles[i].name) == 0) {
                *out = &profiles[i];
                return TR_OK;
            }
        return unknown_profile(explicit_name, err);
    }
    *out = device_name ? profile_in_device_name(device_name) : NULL;
    if (!*out) {
        *out = default_profile();
        *defaulted = 1;
    }
    return TR_OK;
}

/* ---- configuration --------------------------------------------------------------------------------------------- */

static const char *const category_names[] = {"decode", "small_prefill", "medium_prefill", "large_prefill"};

const char *tr_moe_category_name(tr_moe_category c)
{
    return (unsigned)c < 4 ? category_names[c] : "unknown";
}

void tr_moe_select_cfg_default(tr_moe_select_cfg *c)
{
    c->profile = default_profile();
    c->profile_defaulted = 1;
    c->fp32_acc = TR_MOE_FP32_AUTO;
    c->use_decode_gemv = 1;
    c->use_grouped_kernel = 0;
}

/* use_fp32_acc default H >= 1024, overridable by --moe-fp32-acc on|off (§5.1). */
int tr_moe_use_fp32_acc(const tr_moe_select_cfg *c, uint32_t hidden_dim)
{
    if (c && c->fp32_acc != TR_MOE_FP32_AUTO)
        return c->fp32_acc == TR_MOE_FP32_ON;
    return hidden_dim >= 1024;
}

static const tr_moe_profile *cfg_profile(const tr_moe_select_cfg *c)
{
    return c && c->profile ? c->profile : default_profile();
}

/* ---- policy names (§5.5) ----------------------------------------------------------------------------------------- */

/* The 343 tuple-specialized decode names, (g,u,d) in (2..8)^3, g slowest: index (g-2)·49 + (u-2)·7 + (d-2). */
#define SPEC_NAME_(g, u, d) "moe_trellis_swiglu_decode_" #g "_" #u "_" #d,
#define SPEC_D_(g, u) SPEC_NAME_(g, u, 2) SPEC_NAME_(g, u, 3) SPEC_NAME_(g, u, 4) SPEC_NAME_(g, u, 5) \
    SPEC_NAME_(g, u, 6) SPEC_NAME_(g, u, 7) SPEC_NAME_(g, u, 8)
#define SPEC_U_(g) SPEC_D_(g, 2) SPEC_D_(g, 3) SPEC_D_(g, 4) SPEC_D_(g, 5) SPEC_D_(g, 6) SPEC_D_(g, 7) SPEC_D_(g, 8)
static const char *const specialized_names[343] = {
    SPEC_U_(2) SPEC_U_(3) SPEC_U_(4) SPEC_U_(5) SPEC_U_(6) SPEC_U_(7) SPEC_U_(8)
};
#undef SPEC_U_
#undef SPEC_D_
#undef SPEC_NAME_

int tr_bit_tuple_valid(tr_bit_tuple t)
{
    return t.g >= 2 && t.g <= 8 && t.u >= 2 && t.u <= 8 && t.d >= 2 && t.d <= 8;
}

static unsigned tuple_index(tr_bit_tuple t) { return (t.g - 2u) * 49u + (t.u - 2u) * 7u + (t.d - 2u); }

const char *tr_moe_specialized_name(tr_bit_tuple t)
{
    return tr_bit_tuple_valid(t) ? specialized_names[tuple_index(t)] : NULL;
}

/* The dominant tuples of §5.4, in order. */
static const tr_bit_tuple dominant[3] = {{6, 2, 3}, {6, 3, 4}, {6, 2, 4}};

int tr_moe_tuple_is_dominant(tr_bit_tuple t)
{
    for (int i = 0; i < 3; i++)
        if (t.g == dominant[i].g && t.u == dominant[i].u && t.d == dominant[i].d)
            return 1;
    return 0;
}

/* Generic names (returned without gating), then the two gated names; the tuple names follow at index 8. */
static const char *const head_names[8] = {
    TR_MOE_KERNEL_DECODE, TR_MOE_KERNEL_PREFILL4, TR_MOE_KERNEL_PREFILL4_FP32,
    TR_MOE_KERNEL_BASE, TR_MOE_KERNEL_BASE_FP32, TR_MOE_KERNEL_LARGE_BATCH,
    TR_MOE_KERNEL_DECODE_GEMV, TR_MOE_KERNEL_GROUPED,
};
#define GENERIC_COUNT 6
#define HEAD_COUNT 8
#define POLICY_COUNT (HEAD_COUNT + 343)

size_t tr_moe_policy_name_count(void) { return POLICY_COUNT; }

tr_moe_policy_name tr_moe_policy_name_at(size_t i)
{
    tr_moe_policy_name row = {NULL, 0, 0, 0};
    if (i >= POLICY_COUNT)
        return row;
    if (i < HEAD_COUNT) {
        row.name = head_names[i];
        row.generic = i < GENERIC_COUNT;
        row.gated = !row.generic;
        row.listed_when_missing = 1;
    } else {
        size_t t = i - HEAD_COUNT;
        tr_bit_tuple tu = {(uint8_t)(2 + t / 49), (uint8_t)(2 + t / 7 % 7), (uint8_t)(2 + t % 7)};
        row.name = specialized_names[t];
        row.generic = 0;
        row.gated = 1;
        row.listed_when_missing = tr_moe_tuple_is_dominant(tu);
    }
    return row;
}

/* "moe_trellis_swiglu_decode_<g>_<u>_<d>" with single digits 2..8 -> its tuple index, else -1. */
static long specialized_index(const char *name)
{
    static const char prefix[] = "moe_trellis_swiglu_decode_";
    size_t n = sizeof prefix - 1;
    if (strncmp(name, prefix, n) != 0 || strlen(name) != n + 5 || name[n + 1] != '_' || name[n + 3] != '_')
        return -1;
    tr_bit_tuple t = {(uint8_t)(name[n] - '0'), (uint8_t)(name[n + 2] - '0'), (uint8_t)(name[n + 4] - '0')};
    return tr_bit_tuple_valid(t) ? (long)tuple_index(t) : -1;
}

long tr_moe_policy_name_index(const char *name)
{
    for (size_t i = 0; i < HEAD_COUNT; i++)
        if (strcmp(name, head_names[i]) == 0)
            return (long)i;
    long s = specialized_index(name);
    return s < 0 ? -1 : HEAD_COUNT + s;
}

/* ---- availability set ------------------------------------------------------------------------------------------ */

struct tr_moe_avail {
    char **names;            /* sorted by strcmp, unique */
    size_t count, cap;
};

int tr_moe_avail_new(tr_moe_avail **out, tr_error *err)
{
    *out = tr_calloc(1, sizeof **out);
    return *out ? TR_OK : tr_fail(err, TR_E_NOMEM, "avail", "out of memory");
}

/* Position of name in the sorted array (binary search); *found tells whether it is there. */
static size_t avail_position(const tr_moe_avail *a, const char *name, int *found)
{
    size_t lo = 0, hi = a->count;
    *found = 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(a->names[mid], name);
        if (c == 0) {
            *found = 1;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int tr_moe_avail_add(tr_moe_avail *a, const char *name, tr_error *err)
{
    int found;
    size_t at = avail_position(a, name, &found);
    if (found)
        return TR_OK;
    if (a->count == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 16;
        char **grown = tr_realloc(a->names, cap * sizeof *grown);
        if (!grown)
            return tr_fail(err, TR_E_NOMEM, "avail", "out of memory adding \"%s\"", name);
        a->names = grown;
        a->cap = cap;
    }
    char *copy = tr_strdup(name);
    if (!copy)
        return tr_fail(err, TR_E_NOMEM, "avail", "out of memory adding \"%s\"", name);
    memmove(a->names + at + 1, a->names + at, (a->count - at) * sizeof *a->names);
    a->names[at] = copy;
    a->count++;
    return TR_OK;
}

int tr_moe_avail_has(const tr_moe_avail *a, const char *name)
{
    int found = 0;
    if (a && name)
        avail_position(a, name, &found);
    return found;
}

size_t tr_moe_avail_count(const tr_moe_avail *a) { return a ? a->count : 0; }

void tr_moe_avail_free(tr_moe_avail *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->count; i++)
        tr_dealloc(a->names[i]);
    tr_dealloc(a->names);
    tr_dealloc(a);
}

/* ---- the §5.3 algorithm ------------------------------------------------------------------------------------------ */

static void set_choice(tr_moe_selection *sel, const char *kernel, uint32_t tile, tr_moe_category cat, int spec)
{
    sel->kernel = kernel;
    sel->tile_n = tile;
    sel->category = cat;
    sel->specialized = spec;
}

/* n <= decode_max: GEMV when enabled and available, else the tuple-specialized kernel when available, else the
 * generic decode kernel; a dominant tuple whose specialized kernel is absent is a kernel_not_found fallback. */
static int select_decode(const tr_moe_select_cfg *cfg, const tr_bit_tuple *tuple, const tr_moe_avail *avail,
                         tr_moe_diag *diag, tr_moe_selection *sel, tr_error *err)
{
    int gemv = cfg ? cfg->use_decode_gemv : 1;
    if (avail && gemv && tr_moe_avail_has(avail, TR_MOE_KERNEL_DECODE_GEMV)) {
        set_choice(sel, TR_MOE_KERNEL_DECODE_GEMV, TR_MOE_TILE_DECODE, TR_MOE_CAT_DECODE, 0);
        return TR_OK;
    }
    const char *name = tuple ? tr_moe_specialized_name(*tuple) : NULL;
    if (avail && name && tr_moe_avail_has(avail, name)) {
        set_choice(sel, name, TR_MOE_TILE_DECODE, TR_MOE_CAT_DECODE, 1);
        return TR_OK;
    }
    set_choice(sel, TR_MOE_KERNEL_DECODE, TR_MOE_TILE_DECODE, TR_MOE_CAT_DECODE, 0);
    if (avail && name && tr_moe_tuple_is_dominant(*tuple)) {
        sel->fallback_reason = TR_MOE_KERNEL_NOT_FOUND;
        snprintf(sel->fallback_detail, sizeof sel->fallback_detail, "%s -> %s", name, TR_MOE_KERNEL_DECODE);
        if (diag)
            return tr_moe_diag_kernel_fallback(diag, TR_MOE_KERNEL_NOT_FOUND, *tuple, sel->fallback_detail, err);
    }
    return TR_OK;
}

/* n = 0: an invalid_shape error event (§6.2 "also n < 1 in selection"). */
static int select_no_rows(const tr_bit_tuple *tuple, tr_moe_diag *diag, tr_error *err)
{
    static const char detail[] = "select_moe_kernel: n_rows=0, expected >= 1";
    if (diag)
        tr_moe_diag_error_event(diag, TR_MOE_INVALID_SHAPE, tuple, detail);
    return tr_fail(err, TR_E_INVALID_SHAPE, "select_moe_kernel", "n_rows=0, expected >= 1");
}

int tr_select_moe_kernel(const tr_moe_select_cfg *cfg, uint32_t n, int use_fp32_acc, const tr_bit_tuple *tuple,
                         const tr_moe_avail *avail, tr_moe_diag *diag, tr_moe_selection *sel, tr_error *err)
{
    const tr_moe_profile *p = cfg_profile(cfg);
    memset(sel, 0, sizeof *sel);
    if (n < 1)
        return select_no_rows(tuple, diag, err);
    if (n <= p->decode_max)
        return select_decode(cfg, tuple, avail, diag, sel, err);
    if (n <= p->prefill4_max)
        set_choice(sel, use_fp32_acc ? TR_MOE_KERNEL_PREFILL4_FP32 : TR_MOE_KERNEL_PREFILL4, TR_MOE_TILE_PREFILL4,
                   TR_MOE_CAT_SMALL_PREFILL, 0);
    else if (n <= p->base_max)
        set_choice(sel, use_fp32_acc ? TR_MOE_KERNEL_BASE_FP32 : TR_MOE_KERNEL_BASE, TR_MOE_TILE_BASE,
                   TR_MOE_CAT_MEDIUM_PREFILL, 0);
    else if (use_fp32_acc)
        set_choice(sel, TR_MOE_KERNEL_BASE_FP32, TR_MOE_TILE_BASE, TR_MOE_CAT_LARGE_PREFILL, 0);
    else
        set_choice(sel, TR_MOE_KERNEL_LARGE_BATCH, p->large_tile, TR_MOE_CAT_LARGE_PREFILL, 0);
    return TR_OK;
}

/* ---- recommend_kernel and get_kernel_info (§5.4) --------------------------------------------------------------- */

static json_t *tuple_json(tr_bit_tuple t)
{
    json_t *a = json_array();
    json_array_append_new(a, json_integer(t.g));
    json_array_append_new(a, json_integer(t.u));
    json_array_append_new(a, json_integer(t.d));
    return a;
}

/* Descriptions of §5.4; large_prefill names its tile. */
static void describe(const tr_moe_selection *sel, char *buf, size_t size)
{
    switch (sel->category) {
    case TR_MOE_CAT_DECODE: snprintf(buf, size, "Single-token inference optimized"); break;
    case TR_MOE_CAT_SMALL_PREFILL: snprintf(buf, size, "Small batch prefill (4-token SIMD)"); break;
    case TR_MOE_CAT_MEDIUM_PREFILL: snprintf(buf, size, "Medium batch processing"); break;
    default: snprintf(buf, size, "Large batch with tile_n=%u", sel->tile_n); break;
    }
}

json_t *tr_moe_recommend_kernel(const tr_moe_select_cfg *cfg, const tr_moe_avail *avail, uint32_t n,
                                int use_fp32_acc, const tr_bit_tuple *tuple, tr_error *err)
{
    tr_moe_selection sel;
    if (tr_select_moe_kernel(cfg, n, use_fp32_acc, tuple, avail, NULL, &sel, err) != TR_OK)
        return NULL;
    json_t *o = json_object();
    if (!o) {
        tr_fail(err, TR_E_NOMEM, "recommend_kernel", "out of memory");
        return NULL;
    }
    char desc[64];
    describe(&sel, desc, sizeof desc);
    json_object_set_new(o, "batch_size", json_integer(n));
    json_object_set_new(o, "use_fp32_acc", json_boolean(use_fp32_acc));
    json_object_set_new(o, "kernel_name", json_string(sel.kernel));
    json_object_set_new(o, "tile_n", json_integer(sel.tile_n));
    json_object_set_new(o, "category", json_string(tr_moe_category_name(sel.category)));
    json_object_set_new(o, "description", json_string(desc));
    json_object_set_new(o, "specialized", json_boolean(sel.specialized));
    json_object_set_new(o, "bit_tuple", tuple ? tuple_json(*tuple) : json_null());
    json_object_set_new(o, "device_profile", json_string(cfg_profile(cfg)->name));
    return o;
}

/* Every MoE symbol of KERNELS.md §4.8, in table order (the "available" object of get_kernel_info). */
static const char *const moe_swiglu_symbols[] = {
    "moe_trellis_swiglu", "moe_trellis_swiglu_fp32acc", "moe_trellis_swiglu_large_batch", "moe_trellis_swiglu_simd",
    "moe_trellis_swiglu_decode", "moe_trellis_swiglu_decode_6_2_3", "moe_trellis_swiglu_decode_6_3_4",
    "moe_trellis_swiglu_decode_6_2_4", "moe_trellis_swiglu_decode_gemv", "moe_trellis_swiglu_prefill4",
    "moe_trellis_swiglu_prefill4_fp32acc", "moe_trellis_swiglu_grouped", "moe_trellis_mixed_swiglu",
    "moe_trellis_mixed_swiglu_decode", "moe_trellis_mixed_swiglu_prefill", "moe_trellis_mixed_swiglu_large",
    "moe_trellis_fast_2bit_swiglu", "moe_trellis_mixed_bpw_swiglu",
};

static json_t *thresholds_json(const tr_moe_profile *p)
{
    json_t *o = json_object();
    json_object_set_new(o, "decode_max", json_integer(p->decode_max));
    json_object_set_new(o, "prefill4_max", json_integer(p->prefill4_max));
    json_object_set_new(o, "base_max", json_integer(p->base_max));
    json_object_set_new(o, "large_batch_min", json_integer(p->large_batch_min));
    return o;
}

static json_t *tile_sizes_json(const tr_moe_profile *p)
{
    json_t *o = json_object();
    json_object_set_new(o, "decode", json_integer(TR_MOE_TILE_DECODE));
    json_object_set_new(o, "prefill4", json_integer(TR_MOE_TILE_PREFILL4));
    json_object_set_new(o, "base", json_integer(TR_MOE_TILE_BASE));
    json_object_set_new(o, "large_batch", json_integer(p->large_tile));
    return o;
}

static json_t *dominant_json(int as_names)
{
    json_t *a = json_array();
    for (int i = 0; i < 3; i++)
        json_array_append_new(a, as_names ? json_string(tr_moe_specialized_name(dominant[i]))
                                          : tuple_json(dominant[i]));
    return a;
}

static const char *fp32_rule(const tr_moe_select_cfg *cfg)
{
    if (cfg && cfg->fp32_acc == TR_MOE_FP32_ON)
        return "--moe-fp32-acc on";
    if (cfg && cfg->fp32_acc == TR_MOE_FP32_OFF)
        return "--moe-fp32-acc off";
    return "hidden_dim >= 1024";
}

static json_t *available_json(const tr_moe_avail *avail)
{
    json_t *o = json_object();
    for (size_t i = 0; i < sizeof moe_swiglu_symbols / sizeof moe_swiglu_symbols[0]; i++)
        json_object_set_new(o, moe_swiglu_symbols[i], json_boolean(tr_moe_avail_has(avail, moe_swiglu_symbols[i])));
    return o;
}

static json_t *profiles_json(void)
{
    json_t *a = json_array();
    for (size_t i = 0; i < PROFILE_COUNT; i++)
        json_array_append_new(a, json_string(profiles[i].name));
    return a;
}

json_t *tr_moe_kernel_info(const tr_moe_select_cfg *cfg, const tr_moe_avail *avail)
{
    const tr_moe_profile *p = cfg_profile(cfg);
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "device", json_string(p->name));
    json_object_set_new(o, "profile_defaulted", json_boolean(cfg ? cfg->profile_defaulted : 1));
    json_object_set_new(o, "thresholds", thresholds_json(p));
    json_object_set_new(o, "tile_sizes", tile_sizes_json(p));
    json_object_set_new(o, "specialized_kernels", dominant_json(1));
    json_object_set_new(o, "dominant_bit_tuples", dominant_json(0));
    json_object_set_new(o, "use_decode_gemv", json_boolean(cfg ? cfg->use_decode_gemv : 1));
    json_object_set_new(o, "use_fp32_acc_rule", json_string(fp32_rule(cfg)));
    json_object_set_new(o, "available", available_json(avail));
    json_object_set_new(o, "profiles", profiles_json());
    return o;
}
