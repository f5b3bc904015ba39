/*
 * rng.c — splitmix64, FNV-1a 64 and xoshiro256** exactly as KERNELS.md §6.1 writes them.
 */
#include "trellis/rng.h"

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

uint64_t tr_splitmix64(uint64_t x) { return mix64(x + TR_GOLDEN_GAMMA); }

uint64_t tr_splitmix64_next(uint64_t *state)
{
    *state += TR_GOLDEN_GAMMA;
    return mix64(*state);
}

uint64_t tr_fnv1a64(const void *data, size_t n)
{
    const unsigned char *p = data;
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

uint64_t tr_fnv1a64_str(const char *s)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

void tr_rng_seed(tr_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = tr_splitmix64(seed + (uint64_t)i * TR_GOLDEN_GAMMA);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t tr_rng_next(tr_rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

double tr_rng_u01(tr_rng *r) { return (double)(tr_rng_next(r) >> 11) * 0x1p-53; }

int64_t tr_rng_int(tr_rng *r, int64_t a, int64_t b)
{
    double span = (double)b - (double)a + 1.0;
    int64_t v = a + (int64_t)(tr_rng_u01(r) * span);
    return v > b ? b : v;   /* guards the double rounding of huge spans; never taken for spans < 2^53 */
}

double tr_rng_normal(tr_rng *r)
{
    double s = 0.0;
    for (int i = 0; i < 12; i++)
        s += tr_rng_u01(r);
    return s - 6.0;
}
