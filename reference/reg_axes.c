/*
 * reg_axes.c — the shared axis lists of KERNELS.md §5, spelled as case ids spell them (§6.1).
 */
#include "reg_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

const char *const reg_bits_v[7] = {"b=2", "b=3", "b=4", "b=5", "b=6", "b=7", "b=8"};

#define DIMS(key) key "=1", key "=7", key "=15", key "=16", key "=17", key "=31", key "=33", key "=64", key "=100", \
                  key "=127", key "=128", key "=129", key "=257"
const char *const reg_dims_o_v[13] = {DIMS("O")};
const char *const reg_dims_i_v[13] = {DIMS("I")};
const char *const reg_dims_k_v[13] = {DIMS("K")};
const char *const reg_dims_n_v[13] = {DIMS("N")};
const char *const reg_rows_v[22] = {"M=1", "M=2", "M=3", "M=4", "M=5", "M=7", "M=8", "M=9", "M=11", "M=12", "M=13",
                                    "M=15", "M=16", "M=17", "M=23", "M=24", "M=25", "M=31", "M=32", "M=33", "M=64",
                                    "M=129"};
const char *const reg_gs_v[6] = {"gs=128", "gs=64", "gs=32", "gs=16", "gs=256", "gs=100"};
const char *const reg_signs_v[3] = {"signs=unit", "signs=random", "signs=general"};
const char *const reg_values_v[8] = {"values=normal", "values=uniform", "values=large", "values=subnormal",
                                     "values=zeros", "values=signed_zeros", "values=mixed", "values=nan_inf"};
const char *const reg_acc_v[2] = {"acc=f32", "acc=f16"};
const char *const reg_shapes_v[7] = {"H=16;I=16", "H=17;I=15", "H=32;I=32", "H=32;I=48", "H=64;I=48", "H=130;I=70",
                                     "H=256;I=128"};
const char *const reg_topk_v[9] = {"k=1", "k=2", "k=3", "k=4", "k=5", "k=6", "k=7", "k=8", "k=16"};
const char *const reg_experts_v[11] = {"E=1", "E=2", "E=3", "E=4", "E=8", "E=16", "E=64", "E=128", "E=256",
                                       "E=257", "E=512"};
const char *const reg_routing_v[9] = {"routing=uniform", "routing=skewed", "routing=hot_expert",
                                      "routing=one_expert", "routing=empty_experts", "routing=duplicates",
                                      "routing=max_k", "routing=ragged", "routing=invalid"};

/* TUPLES: the practice list first, then the rest of (2..8)^3 in g, u, d order. */
static const char *const practice[12] = {"6-2-3", "6-3-4", "6-2-4", "4-4-4", "2-2-2", "3-3-3",
                                         "5-5-5", "6-6-6", "7-7-7", "8-8-8", "2-8-2", "8-2-8"};
static char tuple_store[343][16];
const char *reg_tuples_v[343];

__attribute__((constructor)) static void build_tuples(void)
{
    int n = 0;
    for (int i = 0; i < 12; i++)
        snprintf(tuple_store[n++], sizeof tuple_store[0], "tuple=%.5s", practice[i]);
    for (unsigned g = 2; g <= 8; g++)
        for (unsigned u = 2; u <= 8; u++)
            for (unsigned d = 2; d <= 8; d++) {
                char t[16];
                snprintf(t, sizeof t, "tuple=%u-%u-%u", g % 10, u % 10, d % 10);
                if (!reg_tuple_is_practice(t + 6))
                    memcpy(tuple_store[n++], t, sizeof t);
            }
    for (int i = 0; i < 343; i++)
        reg_tuples_v[i] = tuple_store[i];
}

int reg_tuple_is_practice(const char *t)
{
    for (int i = 0; i < 12; i++)
        if (strcmp(practice[i], t) == 0)
            return 1;
    return 0;
}

int reg_tuple_parse(const char *s, unsigned t[3])
{
    return s && sscanf(s, "%u-%u-%u", &t[0], &t[1], &t[2]) == 3 && t[0] >= 2 && t[0] <= 8 && t[1] >= 2 &&
                   t[1] <= 8 && t[2] >= 2 && t[2] <= 8
               ? 0
               : -1;
}

int reg_fit_exponent(double sum, double limit)
{
    int e = 0;
    while (isfinite(sum) && sum > limit && e > -1000) {
        sum /= 2;
        e--;
    }
    return e;
}
