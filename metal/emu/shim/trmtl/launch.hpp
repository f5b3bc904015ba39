// trmtl/launch.hpp — what the generated launchers and tables use: parameter types of a kernel function, binding of
// one parameter from a lane (buffers, threadgroup memory, textures, samplers, builtins converted to the declared
// type), threadgroup arena references, and the load-time check that half arithmetic rounds every operation.
#ifndef TRMTL_LAUNCH_HPP
#define TRMTL_LAUNCH_HPP

#include "texture.hpp"

namespace metal {
namespace __trmtl {

template <int I, class... A> struct nth;
template <class H, class... T> struct nth<0, H, T...> { typedef H type; };
template <int I, class H, class... T> struct nth<I, H, T...> { typedef typename nth<I - 1, T...>::type type; };
template <class F, int I> struct arg_of;
template <class R, class... A, int I> struct arg_of<R (*)(A...), I> { typedef typename nth<I, A...>::type type; };
template <class F, int I> using arg_t = typename arg_of<F, I>::type;

// The element a buffer parameter points at (pointer or reference) or holds (value).
template <class A> using pointee_t = rcvref<typename remove_ptr<rcvref<A>>::type>;
template <class A> constexpr unsigned elem_size()
{
    typedef pointee_t<A> E;
    if constexpr (is_same<E, void>::value)
        return 0;
    else
        return (unsigned)sizeof(E);
}
template <class A> constexpr unsigned elem_align()
{
    typedef pointee_t<A> E;
    if constexpr (is_same<E, void>::value)
        return 0;
    else
        return (unsigned)alignof(E);
}

inline trmtl_uint3 builtin3(const trmtl_lane *L, int id)
{
    switch (id) {
    case TRMTL_B_THREAD_POSITION_IN_GRID: return L->thread_position_in_grid;
    case TRMTL_B_THREADGROUP_POSITION_IN_GRID: return L->threadgroup_position_in_grid;
    case TRMTL_B_THREAD_POSITION_IN_THREADGROUP: return L->thread_position_in_threadgroup;
    case TRMTL_B_THREADS_PER_THREADGROUP: return L->threads_per_threadgroup;
    case TRMTL_B_THREADGROUPS_PER_GRID: return L->threadgroups_per_grid;
    case TRMTL_B_THREADS_PER_GRID: return L->threads_per_grid;
    case TRMTL_B_DISPATCH_THREADS_PER_THREADGROUP: return L->dispatch_threads_per_threadgroup;
    case TRMTL_B_GRID_ORIGIN: return L->grid_origin;
    case TRMTL_B_GRID_SIZE: return L->grid_size;
    case TRMTL_B_THREAD_INDEX_IN_THREADGROUP: return trmtl_uint3{L->thread_index_in_threadgroup, 0, 0};
    case TRMTL_B_THREAD_INDEX_IN_SIMDGROUP: return trmtl_uint3{L->thread_index_in_simdgroup, 0, 0};
    case TRMTL_B_SIMDGROUP_INDEX_IN_THREADGROUP: return trmtl_uint3{L->simdgroup_index_in_threadgroup, 0, 0};
    case TRMTL_B_THREADS_PER_SIMDGROUP: return trmtl_uint3{L->threads_per_simdgroup, 0, 0};
    case TRMTL_B_SIMDGROUPS_PER_THREADGROUP: return trmtl_uint3{L->simdgroups_per_threadgroup, 0, 0};
    case TRMTL_B_THREAD_INDEX_IN_QUADGROUP: return trmtl_uint3{L->thread_index_in_quadgroup, 0, 0};
    case TRMTL_B_QUADGROUP_INDEX_IN_THREADGROUP: return trmtl_uint3{L->quadgroup_index_in_threadgroup, 0, 0};
    case TRMTL_B_QUADGROUPS_PER_THREADGROUP: return trmtl_uint3{L->quadgroups_per_threadgroup, 0, 0};
    default: return trmtl_uint3{L->thread_execution_width, 0, 0};
    }
}

template <class A, int K, int I> inline A bind(const trmtl_lane *L)
{
    if constexpr (K == TRMTL_P_BUFFER) {
        void *p = L->bind->buffers[I];
        if constexpr (is_ptr<A>::value)
            return (A)p;
        else if constexpr (is_lref<A>::value)
            return *(typename remove_ref<A>::type *)p;
        else
            return *(const rcvref<A> *)p;
    } else if constexpr (K == TRMTL_P_THREADGROUP) {
        return (A)L->tg_dyn[I];
    } else if constexpr (K == TRMTL_P_TEXTURE) {
        return rcvref<A>(L->bind->textures[I]);
    } else if constexpr (K == TRMTL_P_SAMPLER) {
        return rcvref<A>(L->bind->samplers[I]);
    } else {
        trmtl_uint3 v = builtin3(L, I);
        typedef rcvref<A> D;
        if constexpr (vecish<D>) {
            typedef elem_t<D> E;
            uint c[3] = {v.x, v.y, v.z};
            D d;
            for (int i = 0; i < ncomp<D>(); i++)
                d[i] = E(c[i]);
            return d;
        } else
            return D(v.x);
    }
}

template <class T, unsigned Align> inline T *tg_alloc(uint32_t site)
{
    return (T *)api->tg_alloc(site, sizeof(T), Align > alignof(T) ? Align : alignof(T));
}

long sys_write(int fd, const void *p, unsigned long n) __asm__("write");

// METAL.md §3: half arithmetic must round every operation to binary16 (no excess precision, no contraction).
struct half_selfcheck {
    half_selfcheck()
    {
        volatile half a = hbits(0x6800), b = hbits(0x3C00), c = hbits(0x3555), d = hbits(0x4200);
        half s = half(a + b) - a;              // 2048 + 1 rounds to 2048: 0 (excess precision gives 1)
        half t = a + b - a;                    // the same without the explicit conversion
        half p = c * d * d;                    // 0.33325 * 3 rounded, then * 3 rounded
        half q = half(half(c * d) * d);
        half f = fma_h(hbits(0x3C01), hbits(0x3C01), hbits(0xBC00));   // (1+2^-10)^2 - 1 = 2^-9 + 2^-20 → 2^-9
        if (__builtin_bit_cast(ushort, s) != 0 || __builtin_bit_cast(ushort, t) != 0 ||
            __builtin_bit_cast(ushort, p) != __builtin_bit_cast(ushort, q) || __builtin_bit_cast(ushort, f) != 0x1800) {
            static const char msg[] = "metal-emu: half arithmetic does not round every operation to binary16 "
                                      "(compile with -fexcess-precision=16 -ffp-contract=off)\n";
            sys_write(2, msg, sizeof msg - 1);
            __builtin_abort();
        }
    }
};
inline half_selfcheck half_selfcheck_instance;

} // namespace __trmtl
} // namespace metal

#endif
