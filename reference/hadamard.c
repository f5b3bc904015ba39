/*
 * hadamard.c — blockwise Walsh–Hadamard transform with the normative butterfly order.
 */
#include "trellis/hadamard.h"
#include "trellis/fp16.h"

float tr_hadamard_scale_f32(unsigned m)
{
    switch (m) {
    case 32: return tr_bits_f32(0x3E3504F3);
    case 64: return tr_bits_f32(0x3E000000);
    case 128: return tr_bits_f32(0x3DB504F3);
    default: return 0.0f;
    }
}

void tr_hadamard_butterfly_f32(float *a, unsigned m)
{
    for (unsigned h = 1; h < m; h *= 2)
        for (unsigned j = 0; j < m; j++)
            if ((j & h) == 0) {
                float u = a[j], v = a[j + h];
                a[j] = u + v;
                a[j + h] = u - v;
            }
}

void tr_hadamard128_blocks(float *v, size_t n)
{
    const float r = tr_hadamard_scale_f32(128);
    for (size_t b = 0; b + 128 <= n; b += 128) {
        tr_hadamard_butterfly_f32(v + b, 128);
        for (unsigned j = 0; j < 128; j++)
            v[b + j] = v[b + j] * r;
    }
}
