// trmtl/simdgroup_matrix.hpp — simdgroup_matrix<T,Cols,Rows> (METAL.md §3): every lane holds the whole matrix;
// simdgroup_load/store run once per simdgroup at a rendezvous; simdgroup_multiply_accumulate
//   model 0 (default): for each (i,j): acc = C[i][j]; for k = 0..K-1 ascending: acc = fma(A[i][k], B[k][j], acc) in
//                      the accumulator type (one fp16 rounding per step for half accumulators),
//   model 1:           acc32 = C[i][j] in fp32, the same fp32 fma chain, then one rounding to the accumulator type;
// memoised per simdgroup by operand hash (a lane whose operands differ from the simdgroup's is a "non-uniform MMA"
// diagnostic and computes its own result).
#ifndef TRMTL_SIMDGROUP_MATRIX_HPP
#define TRMTL_SIMDGROUP_MATRIX_HPP

#include "sync.hpp"

namespace metal {

template <class T, int Cols, int Rows> struct simdgroup_matrix {
    static_assert(Cols == 8 && Rows == 8, "simdgroup_matrix: only 8x8 is supported");
    T e_[Rows][Cols];
    simdgroup_matrix() = default;
    // A diagonal matrix (MSL's constructor from one value).
    explicit simdgroup_matrix(T d)
    {
        for (int r = 0; r < Rows; r++)
            for (int c = 0; c < Cols; c++)
                e_[r][c] = r == c ? d : T(0);
    }
    // The two elements this lane holds in our layout (row l/4, columns 2*(l%4) and 2*(l%4)+1); Apple's layout is
    // not reproduced, and writes through it change only this lane's copy (a later MMA sees non-uniform operands).
    vec<T, 2> thread_elements() const
    {
        uint l = __trmtl::api->simd_lane();
        return vec<T, 2>(e_[l / 4][2 * (l % 4)], e_[l / 4][2 * (l % 4) + 1]);
    }
};
typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;
typedef simdgroup_matrix<half, 8, 8> simdgroup_half8x8;

template <class T, int C, int R> inline simdgroup_matrix<T, C, R> make_filled_simdgroup_matrix(T v)
{
    simdgroup_matrix<T, C, R> m;
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++)
            m.e_[r][c] = v;
    return m;
}

namespace __trmtl {
template <class T, int C, int R> struct mload_rec {
    simdgroup_matrix<T, C, R> *m;
    const T *p;
    ulong epr, ox, oy;
    bool tr;
    bool same(const mload_rec &o) const { return p == o.p && epr == o.epr && ox == o.ox && oy == o.oy && tr == o.tr; }
    void load() const
    {
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++)
                m->e_[r][c] = tr ? p[(oy + c) * epr + ox + r] : p[(oy + r) * epr + ox + c];
    }
    void store(const simdgroup_matrix<T, C, R> &a) const
    {
        T *q = (T *)p;
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) {
                if (tr)
                    q[(oy + c) * epr + ox + r] = a.e_[r][c];
                else
                    q[(oy + r) * epr + ox + c] = a.e_[r][c];
            }
    }
};
inline void nonuniform(const char *what, const trmtl_site *cs)
{
    api->diag(TRMTL_D_NON_UNIFORM_MATRIX_OP, cs, what);
}
template <class T, int C, int R> struct mload_resolve {
    void operator()(mload_rec<T, C, R> *const *d, uint32_t m) const
    {
        int f = __builtin_ctz(m);
        d[f]->load();
        for (int l = f + 1; l < 32; l++) {
            if (!(m >> l & 1u))
                continue;
            if (d[l]->same(*d[f]))
                *d[l]->m = *d[f]->m;
            else {
                nonuniform("simdgroup_load with different addresses in one simdgroup", nullptr);
                d[l]->load();
            }
        }
    }
};
template <class T, int C, int R> struct mstore_resolve {
    void operator()(mload_rec<T, C, R> *const *d, uint32_t m) const
    {
        int f = __builtin_ctz(m);
        d[f]->store(*d[f]->m);
        for (int l = f + 1; l < 32; l++) {
            if (!(m >> l & 1u))
                continue;
            if (!d[l]->same(*d[f]) || __builtin_memcmp(d[l]->m, d[f]->m, sizeof *d[f]->m) != 0) {
                nonuniform("simdgroup_store of different matrices or addresses in one simdgroup", nullptr);
                d[l]->store(*d[l]->m);
            }
        }
    }
};
inline uint64_t hash_bytes(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    for (size_t i = 0; i + 8 <= n; i += 8) {
        uint64_t w;
        __builtin_memcpy(&w, b + i, 8);
        h = (h ^ w) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 29;
    }
    for (size_t i = n & ~(size_t)7; i < n; i++)
        h = (h ^ b[i]) * 0x100000001B3ull;
    return h;
}
template <class TD, class TA, class TB, class TC, int N, int K, int M>
inline void mma_compute(simdgroup_matrix<TD, N, M> &d, const simdgroup_matrix<TA, K, M> &a,
                        const simdgroup_matrix<TB, N, K> &b, const simdgroup_matrix<TC, N, M> &c, int model)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            if (model == 1 || !is_same<TD, half>::value) {
                float acc = float(c.e_[i][j]);
                for (int k = 0; k < K; k++)
                    acc = __builtin_fmaf(float(a.e_[i][k]), float(b.e_[k][j]), acc);
                d.e_[i][j] = TD(acc);
            } else {
                half acc = half(c.e_[i][j]);
                for (int k = 0; k < K; k++)
                    acc = fma_h(half(a.e_[i][k]), half(b.e_[k][j]), acc);
                d.e_[i][j] = TD(acc);
            }
        }
}
} // namespace __trmtl

template <class T, class P, int C, int R>
inline void simdgroup_load(simdgroup_matrix<T, C, R> &d, const P *src, ulong elements_per_row = C,
                           ulong2 matrix_origin = ulong2(0ul), bool transpose_matrix = false,
                           __trmtl::site s = __trmtl::site::here())
{
    static_assert(__trmtl::is_same<__trmtl::rcvref<P>, T>::value, "simdgroup_load: element types differ");
    __trmtl::mload_rec<T, C, R> r{&d, (const T *)src, elements_per_row, matrix_origin[0], matrix_origin[1],
                                  transpose_matrix};
    __trmtl::rdv<__trmtl::mload_resolve<T, C, R>>(s, TRMTL_RDV_MATRIX_LOAD, r);
}
template <class T, class P, int C, int R>
inline void simdgroup_store(const simdgroup_matrix<T, C, R> &a, P *dst, ulong elements_per_row = C,
                            ulong2 matrix_origin = ulong2(0ul), bool transpose_matrix = false,
                            __trmtl::site s = __trmtl::site::here())
{
    static_assert(__trmtl::is_same<__trmtl::rcvref<P>, T>::value, "simdgroup_store: element types differ");
    __trmtl::mload_rec<T, C, R> r{(simdgroup_matrix<T, C, R> *)&a, (const T *)dst, elements_per_row,
                                  matrix_origin[0], matrix_origin[1], transpose_matrix};
    __trmtl::rdv<__trmtl::mstore_resolve<T, C, R>>(s, TRMTL_RDV_MATRIX_STORE, r);
}
template <class TD, class TA, class TB, class TC, int N, int K, int M>
inline void simdgroup_multiply_accumulate(simdgroup_matrix<TD, N, M> &d, const simdgroup_matrix<TA, K, M> &a,
                                          const simdgroup_matrix<TB, N, K> &b, const simdgroup_matrix<TC, N, M> &c,
                                          __trmtl::site s = __trmtl::site::here())
{
    int model = __trmtl::api->mma_model();
    uint64_t h = __trmtl::hash_bytes(0xCBF29CE484222325ull ^ (uint64_t)model, &a, sizeof a);
    h = __trmtl::hash_bytes(h, &b, sizeof b);
    h = __trmtl::hash_bytes(h, &c, sizeof c);
    trmtl_site cs = s.c_site();
    void *slot = nullptr;
    int how = __trmtl::api->mma_memo(h, sizeof d, &slot, &cs);
    if (how == TRMTL_MMA_HIT) {
        __builtin_memcpy((void *)&d, slot, sizeof d);
        return;
    }
    simdgroup_matrix<TD, N, M> t;
    __trmtl::mma_compute(t, a, b, c, model);
    if (how == TRMTL_MMA_FILL)
        __builtin_memcpy(slot, (const void *)&t, sizeof t);
    d = t;
}
template <class TD, class TA, class TB, int N, int K, int M>
inline void simdgroup_multiply(simdgroup_matrix<TD, N, M> &d, const simdgroup_matrix<TA, K, M> &a,
                               const simdgroup_matrix<TB, N, K> &b, __trmtl::site s = __trmtl::site::here())
{
    simdgroup_matrix<TD, N, M> z = make_filled_simdgroup_matrix<TD, N, M>(TD(0));
    simdgroup_multiply_accumulate(d, a, b, z, s);
}

} // namespace metal

using metal::simdgroup_float8x8;
using metal::simdgroup_half8x8;

#endif
