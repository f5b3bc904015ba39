/*
 * hadamard.h — the Sylvester Walsh–Hadamard butterfly in its normative stage order (FORMAT.md §6.3, KERNELS.md §4.3).
 */
#ifndef TRELLIS_HADAMARD_H
#define TRELLIS_HADAMARD_H

#include <stddef.h>
#include <stdint.h>

/* f32 constant fl32(1/sqrt(m)) for m = 32, 64, 128 (KERNELS.md §4.3); 0 for other m. */
float tr_hadamard_scale_f32(unsigned m);

/* In-place unnormalised butterfly of a[0..m) (m a power of two): stages h = 1, 2, …, m/2; for j with (j & h) == 0:
 * (a[j], a[j+h]) = (a[j] + a[j+h], a[j] − a[j+h]), each an RN32 operation. */
void tr_hadamard_butterfly_f32(float *a, unsigned m);

/* FORMAT.md §6.3: each contiguous 128-block of v[0..n) (n % 128 == 0) gets the butterfly, then ·R, R = 0x3DB504F3. */
void tr_hadamard128_blocks(float *v, size_t n);

#endif
