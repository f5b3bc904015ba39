/*
 * rng.h — the harness's deterministic random streams and name hashes (KERNELS.md §6.1, FORMAT.md §6.4).
 *
 * splitmix64 mixes seeds; fnv1a64 hashes names (case ids, tensor names); xoshiro256** produces streams.  Every
 * generator output is bit-reproducible on every platform.
 */
#ifndef TRELLIS_RNG_H
#define TRELLIS_RNG_H

#include <stddef.h>
#include <stdint.h>

#define TR_GOLDEN_GAMMA UINT64_C(0x9E3779B97F4A7C15)

/* splitmix64(x): z = x + gamma; z = (z ^ z>>30)·0xBF58476D1CE4E5B9; z = (z ^ z>>27)·0x94D049BB133111EB; z ^ z>>31. */
uint64_t tr_splitmix64(uint64_t x);
/* The stepping form of FORMAT.md §6.4: *state += gamma, then the same mix of the new state. */
uint64_t tr_splitmix64_next(uint64_t *state);
/* FNV-1a 64 over bytes (offset 0xcbf29ce484222325, prime 0x100000001b3). */
uint64_t tr_fnv1a64(const void *data, size_t n);
uint64_t tr_fnv1a64_str(const char *s);

typedef struct tr_rng {
    uint64_t s[4];
} tr_rng;

/* xoshiro256** with s_i = splitmix64(seed + i·gamma). */
void tr_rng_seed(tr_rng *r, uint64_t seed);
uint64_t tr_rng_next(tr_rng *r);
/* (next >> 11)·2^-53, in [0, 1). */
double tr_rng_u01(tr_rng *r);
/* Uniform integer in [a, b] from one draw: a + floor(u01·(b − a + 1)). */
int64_t tr_rng_int(tr_rng *r, int64_t a, int64_t b);
/* Irwin–Hall normal deviate: (sum of 12 u01 in f64, draw order) − 6. */
double tr_rng_normal(tr_rng *r);

#endif
