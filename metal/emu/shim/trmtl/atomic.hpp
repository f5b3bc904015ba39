// trmtl/atomic.hpp — device and threadgroup atomic<T> for int, uint, ulong, bool and float via compiler atomics
// (sequentially consistent whatever order the kernel names; float add/sub/min/max by a CAS loop).  Atomics are not
// scheduling points: a lane spinning on an atomic that another lane of its threadgroup must set never yields, and the
// watchdog ends the launch (TIMEOUT), as METAL.md §4 says.
#ifndef TRMTL_ATOMIC_HPP
#define TRMTL_ATOMIC_HPP

#include "sync.hpp"

namespace metal {

template <class T> struct atomic {
    alignas(sizeof(T)) T __v;
};
typedef atomic<int> atomic_int;
typedef atomic<uint> atomic_uint;
typedef atomic<bool> atomic_bool;
typedef atomic<float> atomic_float;
typedef atomic<ulong> atomic_ulong;
typedef atomic<long> atomic_long;

namespace __trmtl {
template <class T> inline rcvref<T> aload(const volatile T *p)
{
    rcvref<T> v;
    __atomic_load((rcvref<T> *)p, &v, __ATOMIC_SEQ_CST);
    return v;
}
template <class T, class F> inline T cas_loop(volatile T *p, F f)
{
    T old = aload(p), nv;
    do
        nv = f(old);
    while (!__atomic_compare_exchange((T *)p, &old, &nv, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return old;
}
} // namespace __trmtl

template <class T> inline void atomic_init(volatile atomic<T> *o, T v) { o->__v = v; }
template <class T, class U> inline void atomic_store_explicit(volatile atomic<T> *o, U v, memory_order = memory_order_relaxed)
{
    T t = T(v);
    __atomic_store((T *)&o->__v, &t, __ATOMIC_SEQ_CST);
}
template <class T> inline T atomic_load_explicit(const volatile atomic<T> *o, memory_order = memory_order_relaxed)
{
    return __trmtl::aload(&o->__v);
}
template <class T, class U> inline T atomic_exchange_explicit(volatile atomic<T> *o, U v, memory_order = memory_order_relaxed)
{
    T t = T(v), old;
    __atomic_exchange((T *)&o->__v, &t, &old, __ATOMIC_SEQ_CST);
    return old;
}
template <class T, class U>
inline bool atomic_compare_exchange_weak_explicit(volatile atomic<T> *o, T *expected, U desired,
                                                  memory_order = memory_order_relaxed,
                                                  memory_order = memory_order_relaxed)
{
    T d = T(desired);
    return __atomic_compare_exchange((T *)&o->__v, expected, &d, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
template <class T, class U>
inline bool atomic_compare_exchange_strong_explicit(volatile atomic<T> *o, T *expected, U desired,
                                                    memory_order = memory_order_relaxed,
                                                    memory_order = memory_order_relaxed)
{
    return atomic_compare_exchange_weak_explicit(o, expected, desired);
}

#define TRMTL_ATOMIC_RMW(name, builtin, expr)                                                                          \
    template <class T, class U> inline T name(volatile atomic<T> *o, U v, memory_order = memory_order_relaxed)         \
    {                                                                                                                  \
        T a = T(v);                                                                                                    \
        if constexpr (__trmtl::is_fp_t<T>::value)                                                                      \
            return __trmtl::cas_loop(&o->__v, [a](T x) { return T(expr); });                                          \
        else                                                                                                           \
            return builtin((T *)&o->__v, a, __ATOMIC_SEQ_CST);                                                         \
    }
TRMTL_ATOMIC_RMW(atomic_fetch_add_explicit, __atomic_fetch_add, x + a)
TRMTL_ATOMIC_RMW(atomic_fetch_sub_explicit, __atomic_fetch_sub, x - a)
#undef TRMTL_ATOMIC_RMW
#define TRMTL_ATOMIC_BITS(name, builtin)                                                                               \
    template <class T, class U> inline T name(volatile atomic<T> *o, U v, memory_order = memory_order_relaxed)         \
    {                                                                                                                  \
        return builtin((T *)&o->__v, T(v), __ATOMIC_SEQ_CST);                                                          \
    }
TRMTL_ATOMIC_BITS(atomic_fetch_and_explicit, __atomic_fetch_and)
TRMTL_ATOMIC_BITS(atomic_fetch_or_explicit, __atomic_fetch_or)
TRMTL_ATOMIC_BITS(atomic_fetch_xor_explicit, __atomic_fetch_xor)
#undef TRMTL_ATOMIC_BITS
template <class T, class U> inline T atomic_fetch_min_explicit(volatile atomic<T> *o, U v, memory_order = memory_order_relaxed)
{
    T a = T(v);
    return __trmtl::cas_loop(&o->__v, [a](T x) { return __trmtl::vmin(x, a); });
}
template <class T, class U> inline T atomic_fetch_max_explicit(volatile atomic<T> *o, U v, memory_order = memory_order_relaxed)
{
    T a = T(v);
    return __trmtl::cas_loop(&o->__v, [a](T x) { return __trmtl::vmax(x, a); });
}

} // namespace metal

using metal::atomic_bool;
using metal::atomic_float;
using metal::atomic_int;
using metal::atomic_uint;

#endif
