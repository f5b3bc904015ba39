/*
 * cpu_backend.h — the `cpu` backend (private to engine/): SIMD + threads, canonical orders, bitwise equal to ref.
 */
#ifndef TRELLIS_CPU_BACKEND_H
#define TRELLIS_CPU_BACKEND_H

#include "trellis/backend.h"

int tr_cpu_backend_create(int threads, tr_backend **out, tr_error *err);

#endif
