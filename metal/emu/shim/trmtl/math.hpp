// trmtl/math.hpp — MSL math, common, integer, geometric and relational functions, element-wise on vectors.
// Half overloads compute in float and round once (METAL.md §3); fma on half and float is correctly rounded once;
// transcendental accuracy is the host libm's (GCC builtins → libm).  fast:: and precise:: name the same functions.
#ifndef TRMTL_MATH_HPP
#define TRMTL_MATH_HPP

#include "core.hpp"

namespace metal {
namespace __trmtl {

// Scalar common type of mixed arguments: same type → it; floating ⊕ integer → the floating type; else C++'s.
template <class A, class B> struct common2 {
    typedef typename cond<is_same<A, B>::value, A,
                          typename cond<is_fp_t<A>::value && !is_fp_t<B>::value, A,
                                        typename cond<is_fp_t<B>::value && !is_fp_t<A>::value, B,
                                                      decltype(A() + B())>::type>::type>::type type;
};
template <class A, class B> struct elem2 {
    typedef typename cond<vecish<A> && !vecish<B>, elem_t<A>,
                          typename cond<vecish<B> && !vecish<A>, elem_t<B>,
                                        typename common2<elem_t<A>, elem_t<B>>::type>::type>::type type;
};
template <class A, class B, class C> struct elem3 {
    typedef typename cond<vecish<A>, elem_t<A>,
                          typename cond<vecish<B>, elem_t<B>,
                                        typename cond<vecish<C>, elem_t<C>,
                                                      typename common2<typename common2<elem_t<A>, elem_t<B>>::type,
                                                                       elem_t<C>>::type>::type>::type>::type type;
};
template <class A, class B, class C> constexpr int n3()
{
    return vecish<A> ? ncomp<A>() : vecish<B> ? ncomp<B>() : ncomp<C>();
}
// Result element of a floating-point function: half and float stay, integers compute in float.
template <class E> using fres_t = typename cond<is_same<E, half>::value, half, float>::type;

template <class A, class F> constexpr auto map1(const A &a, F f)
{
    if constexpr (vecish<A>) {
        typedef decltype(f(elem_t<A>())) R;
        vec<R, ncomp<A>()> r;
        for (int i = 0; i < ncomp<A>(); i++)
            r.v_[i] = f(elem_t<A>(a[i]));
        return r;
    } else
        return f(a);
}
template <class A, class B, class F> constexpr auto map2(const A &a, const B &b, F f)
{
    typedef typename elem2<A, B>::type E;
    if constexpr (vecish<A> || vecish<B>) {
        constexpr int N = vecish<A> ? ncomp<A>() : ncomp<B>();
        typedef decltype(f(E(), E())) R;
        vec<R, N> r;
        for (int i = 0; i < N; i++)
            r.v_[i] = f(E(el(a, i)), E(el(b, i)));
        return r;
    } else
        return f(E(a), E(b));
}
template <class A, class B, class C, class F> constexpr auto map3(const A &a, const B &b, const C &c, F f)
{
    typedef typename elem3<A, B, C>::type E;
    if constexpr (vecish<A> || vecish<B> || vecish<C>) {
        constexpr int N = n3<A, B, C>();
        typedef decltype(f(E(), E(), E())) R;
        vec<R, N> r;
        for (int i = 0; i < N; i++)
            r.v_[i] = f(E(el(a, i)), E(el(b, i)), E(el(c, i)));
        return r;
    } else
        return f(E(a), E(b), E(c));
}
template <class T> concept num = scalar<T> || vecish<T>;

inline float fma_f(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
// fp16 fma: one f64 fma then one RNE conversion to f16 (exact for f16 operands, KERNELS.md §0).
inline half fma_h(half a, half b, half c) { return (half)__builtin_fma((double)a, (double)b, (double)c); }
} // namespace __trmtl

// ---- floating-point functions of one argument --------------------------------------------------------------------
#define TRMTL_F1(name, expr)                                                                                           \
    namespace __trmtl {                                                                                                \
    inline float name##_f(float x) { return expr; }                                                                    \
    }                                                                                                                  \
    template <__trmtl::num A> inline auto name(const A &a)                                                             \
    {                                                                                                                  \
        return __trmtl::map1(a, [](auto e) {                                                                           \
            typedef __trmtl::fres_t<decltype(e)> R;                                                                    \
            return R(__trmtl::name##_f(float(e)));                                                                     \
        });                                                                                                            \
    }
TRMTL_F1(sqrt, __builtin_sqrtf(x))
TRMTL_F1(rsqrt, 1.0f / __builtin_sqrtf(x))
TRMTL_F1(exp, __builtin_expf(x))
TRMTL_F1(exp2, __builtin_exp2f(x))
TRMTL_F1(exp10, __builtin_powf(10.0f, x))
TRMTL_F1(log, __builtin_logf(x))
TRMTL_F1(log2, __builtin_log2f(x))
TRMTL_F1(log10, __builtin_log10f(x))
TRMTL_F1(sin, __builtin_sinf(x))
TRMTL_F1(cos, __builtin_cosf(x))
TRMTL_F1(tan, __builtin_tanf(x))
TRMTL_F1(asin, __builtin_asinf(x))
TRMTL_F1(acos, __builtin_acosf(x))
TRMTL_F1(atan, __builtin_atanf(x))
TRMTL_F1(sinh, __builtin_sinhf(x))
TRMTL_F1(cosh, __builtin_coshf(x))
TRMTL_F1(tanh, __builtin_tanhf(x))
TRMTL_F1(asinh, __builtin_asinhf(x))
TRMTL_F1(acosh, __builtin_acoshf(x))
TRMTL_F1(atanh, __builtin_atanhf(x))
TRMTL_F1(sinpi, __builtin_sinf(x * 3.14159265358979323846f))
TRMTL_F1(cospi, __builtin_cosf(x * 3.14159265358979323846f))
TRMTL_F1(tanpi, __builtin_tanf(x * 3.14159265358979323846f))
TRMTL_F1(floor, __builtin_floorf(x))
TRMTL_F1(ceil, __builtin_ceilf(x))
TRMTL_F1(trunc, __builtin_truncf(x))
TRMTL_F1(round, __builtin_roundf(x))
TRMTL_F1(rint, __builtin_rintf(x))
TRMTL_F1(fract, __builtin_fminf(x - __builtin_floorf(x), 0x1.fffffep-1f))
TRMTL_F1(saturate, __builtin_fminf(__builtin_fmaxf(x, 0.0f), 1.0f))
TRMTL_F1(fabs, __builtin_fabsf(x))
TRMTL_F1(erf, __builtin_erff(x))
TRMTL_F1(erfc, __builtin_erfcf(x))
TRMTL_F1(cbrt, __builtin_cbrtf(x))
TRMTL_F1(sign, x > 0.0f ? 1.0f : x < 0.0f ? -1.0f : x == x ? x : 0.0f)
#undef TRMTL_F1

// ---- floating-point functions of two and three arguments ---------------------------------------------------------
#define TRMTL_F2(name, expr)                                                                                           \
    namespace __trmtl {                                                                                                \
    inline float name##_f(float x, float y) { return expr; }                                                           \
    }                                                                                                                  \
    template <__trmtl::num A, __trmtl::num B> inline auto name(const A &a, const B &b)                                 \
    {                                                                                                                  \
        return __trmtl::map2(a, b, [](auto x, auto y) {                                                                \
            typedef __trmtl::fres_t<decltype(x)> R;                                                                    \
            return R(__trmtl::name##_f(float(x), float(y)));                                                           \
        });                                                                                                            \
    }
TRMTL_F2(pow, __builtin_powf(x, y))
TRMTL_F2(powr, __builtin_powf(x, y))
TRMTL_F2(atan2, __builtin_atan2f(x, y))
TRMTL_F2(fmod, __builtin_fmodf(x, y))
TRMTL_F2(copysign, __builtin_copysignf(x, y))
TRMTL_F2(fdim, __builtin_fdimf(x, y))
TRMTL_F2(step, y < x ? 0.0f : 1.0f)
TRMTL_F2(divide, x / y)
TRMTL_F2(nextafter, __builtin_nextafterf(x, y))
#undef TRMTL_F2

template <__trmtl::num A, __trmtl::num B, __trmtl::num C> inline auto fma(const A &a, const B &b, const C &c)
{
    return __trmtl::map3(a, b, c, [](auto x, auto y, auto z) {
        typedef decltype(x) E;
        if constexpr (__trmtl::is_same<E, half>::value)
            return __trmtl::fma_h(x, y, z);
        else
            return __trmtl::fma_f(float(x), float(y), float(z));
    });
}
template <__trmtl::num A, __trmtl::num B, __trmtl::num C> inline auto mad(const A &a, const B &b, const C &c)
{
    return fma(a, b, c);
}
template <__trmtl::num A, __trmtl::num B, __trmtl::num C> inline auto mix(const A &a, const B &b, const C &t)
{
    return __trmtl::map3(a, b, t, [](auto x, auto y, auto s) {
        typedef decltype(x) E;
        return E(x + E(E(y - x) * s));
    });
}
template <__trmtl::num A, __trmtl::num B, __trmtl::num C> inline auto smoothstep(const A &e0, const B &e1, const C &x)
{
    return __trmtl::map3(e0, e1, x, [](auto a, auto b, auto v) {
        typedef __trmtl::fres_t<decltype(a)> R;
        float t = __builtin_fminf(__builtin_fmaxf((float(v) - float(a)) / (float(b) - float(a)), 0.0f), 1.0f);
        return R(t * t * (3.0f - 2.0f * t));
    });
}

// ---- min/max/clamp/abs: exact in the argument type (floats: fmin/fmax semantics, a NaN operand loses) ------------
namespace __trmtl {
template <class E> constexpr E vmin(E a, E b)
{
    if constexpr (is_fp_t<E>::value)
        return (a != a) ? b : (b != b) ? a : (b < a ? b : a);
    else
        return b < a ? b : a;
}
template <class E> constexpr E vmax(E a, E b)
{
    if constexpr (is_fp_t<E>::value)
        return (a != a) ? b : (b != b) ? a : (a < b ? b : a);
    else
        return a < b ? b : a;
}
} // namespace __trmtl
template <__trmtl::num A, __trmtl::num B> constexpr auto min(const A &a, const B &b)
{
    return __trmtl::map2(a, b, [](auto x, auto y) { return __trmtl::vmin(x, y); });
}
template <__trmtl::num A, __trmtl::num B> constexpr auto max(const A &a, const B &b)
{
    return __trmtl::map2(a, b, [](auto x, auto y) { return __trmtl::vmax(x, y); });
}
template <__trmtl::num A, __trmtl::num B> constexpr auto fmin(const A &a, const B &b) { return min(a, b); }
template <__trmtl::num A, __trmtl::num B> constexpr auto fmax(const A &a, const B &b) { return max(a, b); }
template <__trmtl::num A, __trmtl::num B, __trmtl::num C> constexpr auto min3(const A &a, const B &b, const C &c)
{
    return min(min(a, b), c);
}
template <__trmtl::num A, __trmtl::num B, __trmtl::num C> constexpr auto max3(const A &a, const B &b, const C &c)
{
    return max(max(a, b), c);
}
template <__trmtl::num A, __trmtl::num B, __trmtl::num C> constexpr auto median3(const A &a, const B &b, const C &c)
{
    return max(min(a, b), min(max(a, b), c));
}
template <__trmtl::num A, __trmtl::num B, __trmtl::num C> constexpr auto clamp(const A &x, const B &lo, const C &hi)
{
    return __trmtl::map3(x, lo, hi, [](auto v, auto l, auto h) { return __trmtl::vmin(__trmtl::vmax(v, l), h); });
}
template <__trmtl::num A> constexpr auto abs(const A &a)
{
    return __trmtl::map1(a, [](auto e) {
        typedef decltype(e) E;
        if constexpr (__trmtl::is_fp_t<E>::value)
            return E(__builtin_fabsf(float(e)));
        else if constexpr (__trmtl::is_signed_t<E>::value)
            return E(e < 0 ? E(-e) : e);
        else
            return e;
    });
}
template <__trmtl::num A, __trmtl::num B> constexpr auto absdiff(const A &a, const B &b)
{
    return __trmtl::map2(a, b, [](auto x, auto y) { return decltype(x)(x > y ? x - y : y - x); });
}

// ---- frexp / ldexp / modf ---------------------------------------------------------------------------------------
template <__trmtl::num A, __trmtl::num B> inline auto ldexp(const A &a, const B &e)
{
    return __trmtl::map2(a, e, [](auto x, auto k) {
        typedef __trmtl::fres_t<decltype(x)> R;
        return R(__builtin_ldexpf(float(x), int(k)));
    });
}
template <__trmtl::fpscalar T> inline T frexp(T x, int &e) { return T(__builtin_frexpf(float(x), &e)); }
template <__trmtl::fpscalar T> inline T modf(T x, T &ip)
{
    float i;
    float f = __builtin_modff(float(x), &i);
    ip = T(i);
    return T(f);
}

// ---- relational -------------------------------------------------------------------------------------------------
template <__trmtl::num A> constexpr auto isnan(const A &a)
{
    return __trmtl::map1(a, [](auto e) { return bool(e != e); });
}
template <__trmtl::num A> constexpr auto isinf(const A &a)
{
    return __trmtl::map1(a, [](auto e) { return bool(__builtin_isinf(float(e))); });
}
template <__trmtl::num A> constexpr auto isfinite(const A &a)
{
    return __trmtl::map1(a, [](auto e) { return bool(__builtin_isfinite(float(e))); });
}
template <__trmtl::num A> constexpr auto isnormal(const A &a)
{
    return __trmtl::map1(a, [](auto e) {
        if constexpr (__trmtl::is_same<decltype(e), half>::value) {
            ushort b = __builtin_bit_cast(ushort, e) & 0x7C00;
            return b != 0 && b != 0x7C00;
        } else
            return bool(__builtin_isnormal(float(e)));
    });
}
template <__trmtl::num A> constexpr auto signbit(const A &a)
{
    return __trmtl::map1(a, [](auto e) { return bool(__builtin_signbit(float(e))); });
}
template <__trmtl::num A, __trmtl::num B> constexpr auto isunordered(const A &a, const B &b)
{
    return __trmtl::map2(a, b, [](auto x, auto y) { return bool(x != x || y != y); });
}
template <__trmtl::num A, __trmtl::num B> constexpr auto isordered(const A &a, const B &b)
{
    return __trmtl::map2(a, b, [](auto x, auto y) { return bool(x == x && y == y); });
}
constexpr bool all(bool b) { return b; }
constexpr bool any(bool b) { return b; }
template <__trmtl::vecish A> constexpr bool all(const A &a)
{
    for (int i = 0; i < __trmtl::ncomp<A>(); i++)
        if (!a[i])
            return false;
    return true;
}
template <__trmtl::vecish A> constexpr bool any(const A &a)
{
    for (int i = 0; i < __trmtl::ncomp<A>(); i++)
        if (a[i])
            return true;
    return false;
}
// select(a, b, c): c ? b : a, element-wise.
template <class A, class B, class C> constexpr auto select(const A &a, const B &b, const C &c)
{
    if constexpr (__trmtl::vecish<A> || __trmtl::vecish<B> || __trmtl::vecish<C>) {
        typedef typename __trmtl::elem2<A, B>::type E;
        constexpr int N = __trmtl::n3<A, B, C>();
        vec<E, N> r;
        for (int i = 0; i < N; i++)
            r.v_[i] = __trmtl::el(c, i) ? E(__trmtl::el(b, i)) : E(__trmtl::el(a, i));
        return r;
    } else {
        typedef typename __trmtl::common2<A, B>::type E;
        return c ? E(b) : E(a);
    }
}

// ---- integer functions ------------------------------------------------------------------------------------------
namespace __trmtl {
template <class E> constexpr int bits() { return int(sizeof(E) * 8); }
template <class E> constexpr auto ucast(E e)
{
    if constexpr (sizeof(E) <= 4)
        return (unsigned)(typename cond<sizeof(E) == 1, uchar, typename cond<sizeof(E) == 2, ushort, uint>::type>::type)e;
    else
        return (unsigned long)e;
}
} // namespace __trmtl
template <__trmtl::num A> constexpr auto popcount(const A &a)
{
    return __trmtl::map1(a, [](auto e) { return decltype(e)(__builtin_popcountll(__trmtl::ucast(e))); });
}
template <__trmtl::num A> constexpr auto clz(const A &a)
{
    return __trmtl::map1(a, [](auto e) {
        typedef decltype(e) E;
        auto u = __trmtl::ucast(e);
        return E(u == 0 ? __trmtl::bits<E>() : __builtin_clzll(u) - (64 - __trmtl::bits<E>()));
    });
}
template <__trmtl::num A> constexpr auto ctz(const A &a)
{
    return __trmtl::map1(a, [](auto e) {
        typedef decltype(e) E;
        auto u = __trmtl::ucast(e);
        return E(u == 0 ? __trmtl::bits<E>() : __builtin_ctzll(u));
    });
}
template <__trmtl::num A> constexpr auto reverse_bits(const A &a)
{
    return __trmtl::map1(a, [](auto e) {
        typedef decltype(e) E;
        unsigned long u = __trmtl::ucast(e), r = 0;
        for (int i = 0; i < __trmtl::bits<E>(); i++)
            r |= ((u >> i) & 1ul) << (__trmtl::bits<E>() - 1 - i);
        return E(r);
    });
}
template <__trmtl::num A> constexpr auto extract_bits(const A &a, uint offset, uint count)
{
    return __trmtl::map1(a, [offset, count](auto e) {
        typedef decltype(e) E;
        if (count == 0)
            return E(0);
        unsigned long u = (unsigned long)__trmtl::ucast(e) >> offset;
        unsigned long m = count >= 64 ? ~0ul : ((1ul << count) - 1);
        u &= m;
        if constexpr (__trmtl::is_signed_t<E>::value)
            if (count < 64 && ((u >> (count - 1)) & 1))
                u |= ~m;
        return E(u);
    });
}
template <__trmtl::num A, __trmtl::num B> constexpr auto insert_bits(const A &base, const B &ins, uint offset, uint count)
{
    return __trmtl::map2(base, ins, [offset, count](auto b, auto i) {
        typedef decltype(b) E;
        unsigned long m = (count >= 64 ? ~0ul : ((1ul << count) - 1)) << offset;
        unsigned long r = ((unsigned long)__trmtl::ucast(b) & ~m) | (((unsigned long)__trmtl::ucast(i) << offset) & m);
        return E(r);
    });
}
template <__trmtl::num A, __trmtl::num B> constexpr auto rotate(const A &a, const B &n)
{
    return __trmtl::map2(a, n, [](auto x, auto k) {
        typedef decltype(x) E;
        constexpr int w = __trmtl::bits<E>();
        unsigned long u = __trmtl::ucast(x);
        int s = int((unsigned long)__trmtl::ucast(k) % w);
        unsigned long m = w == 64 ? ~0ul : ((1ul << w) - 1);
        return E(s == 0 ? u : (((u << s) | (u >> (w - s))) & m));
    });
}
template <__trmtl::num A, __trmtl::num B> constexpr auto mul_hi(const A &a, const B &b)
{
    return __trmtl::map2(a, b, [](auto x, auto y) {
        typedef decltype(x) E;
        if constexpr (sizeof(E) == 8) {
            typedef typename __trmtl::cond<__trmtl::is_signed_t<E>::value, __int128, unsigned __int128>::type W;
            return E((W(x) * W(y)) >> 64);
        } else
            return E((long(x) * long(y)) >> __trmtl::bits<E>());
    });
}
template <__trmtl::num A, __trmtl::num B> constexpr auto hadd(const A &a, const B &b)
{
    return __trmtl::map2(a, b, [](auto x, auto y) { return decltype(x)((__int128(x) + __int128(y)) >> 1); });
}
template <__trmtl::num A, __trmtl::num B> constexpr auto rhadd(const A &a, const B &b)
{
    return __trmtl::map2(a, b, [](auto x, auto y) { return decltype(x)((__int128(x) + __int128(y) + 1) >> 1); });
}
template <__trmtl::num A, __trmtl::num B> constexpr auto addsat(const A &a, const B &b)
{
    return __trmtl::map2(a, b, [](auto x, auto y) {
        typedef decltype(x) E;
        __int128 s = __int128(x) + __int128(y);
        __int128 lo = __int128(numeric_limits<E>::min()), hi = __int128(numeric_limits<E>::max());
        return E(s < lo ? lo : s > hi ? hi : s);
    });
}
template <__trmtl::num A, __trmtl::num B> constexpr auto subsat(const A &a, const B &b)
{
    return __trmtl::map2(a, b, [](auto x, auto y) {
        typedef decltype(x) E;
        __int128 s = __int128(x) - __int128(y);
        __int128 lo = __int128(numeric_limits<E>::min()), hi = __int128(numeric_limits<E>::max());
        return E(s < lo ? lo : s > hi ? hi : s);
    });
}

// ---- geometric --------------------------------------------------------------------------------------------------
template <__trmtl::vecish A, __trmtl::vecish B> constexpr auto dot(const A &a, const B &b)
{
    typedef typename __trmtl::elem2<A, B>::type E;
    E s = E(E(a[0]) * E(b[0]));
    for (int i = 1; i < __trmtl::ncomp<A>(); i++)
        s = E(s + E(E(a[i]) * E(b[i])));
    return s;
}
template <__trmtl::vecish A> inline auto length_squared(const A &a) { return dot(a, a); }
template <__trmtl::vecish A> inline auto length(const A &a)
{
    typedef __trmtl::elem_t<A> E;
    return E(__builtin_sqrtf(float(dot(a, a))));
}
template <__trmtl::vecish A, __trmtl::vecish B> inline auto distance(const A &a, const B &b) { return length(a - b); }
template <__trmtl::vecish A> inline auto normalize(const A &a)
{
    typedef __trmtl::elem_t<A> E;
    E inv = E(1.0f / __builtin_sqrtf(float(dot(a, a))));
    return a * inv;
}
template <__trmtl::vecish A, __trmtl::vecish B> constexpr auto cross(const A &a, const B &b)
{
    typedef typename __trmtl::elem2<A, B>::type E;
    return vec<E, 3>(E(a[1] * b[2] - a[2] * b[1]), E(a[2] * b[0] - a[0] * b[2]), E(a[0] * b[1] - a[1] * b[0]));
}
template <__trmtl::vecish A, __trmtl::vecish B> constexpr auto reflect(const A &i, const B &n)
{
    return i - n * (dot(n, i) * 2);
}

// ---- pack / unpack ----------------------------------------------------------------------------------------------
inline float4 unpack_unorm4x8_to_float(uint v)
{
    return float4(float(v & 255u) / 255.0f, float((v >> 8) & 255u) / 255.0f, float((v >> 16) & 255u) / 255.0f,
                  float(v >> 24) / 255.0f);
}
inline float4 unpack_snorm4x8_to_float(uint v)
{
    float4 r;
    for (int i = 0; i < 4; i++)
        r[i] = __builtin_fmaxf(float((signed char)((v >> (8 * i)) & 255u)) / 127.0f, -1.0f);
    return r;
}
inline half4 unpack_unorm4x8_to_half(uint v) { return half4(unpack_unorm4x8_to_float(v)); }
inline float2 unpack_unorm2x16_to_float(uint v)
{
    return float2(float(v & 65535u) / 65535.0f, float(v >> 16) / 65535.0f);
}
inline uint pack_float_to_unorm4x8(float4 v)
{
    uint r = 0;
    for (int i = 0; i < 4; i++)
        r |= uint(__builtin_rintf(__builtin_fminf(__builtin_fmaxf(v[i], 0.0f), 1.0f) * 255.0f)) << (8 * i);
    return r;
}
inline uint pack_float_to_snorm4x8(float4 v)
{
    uint r = 0;
    for (int i = 0; i < 4; i++)
        r |= (uint(int(__builtin_rintf(__builtin_fminf(__builtin_fmaxf(v[i], -1.0f), 1.0f) * 127.0f))) & 255u)
             << (8 * i);
    return r;
}
inline uint pack_float_to_unorm2x16(float2 v)
{
    uint r = 0;
    for (int i = 0; i < 2; i++)
        r |= uint(__builtin_rintf(__builtin_fminf(__builtin_fmaxf(v[i], 0.0f), 1.0f) * 65535.0f)) << (16 * i);
    return r;
}

namespace fast {
using metal::acos; using metal::acosh; using metal::asin; using metal::asinh; using metal::atan; using metal::atan2;
using metal::atanh; using metal::ceil; using metal::clamp; using metal::copysign; using metal::cos; using metal::cosh;
using metal::cospi; using metal::distance; using metal::divide; using metal::exp; using metal::exp10; using metal::exp2;
using metal::fabs; using metal::fdim; using metal::floor; using metal::fma; using metal::fmax; using metal::fmin;
using metal::fmod; using metal::fract; using metal::length; using metal::log; using metal::log10; using metal::log2;
using metal::max; using metal::min; using metal::normalize; using metal::pow; using metal::powr; using metal::rint;
using metal::round; using metal::rsqrt; using metal::saturate; using metal::sign; using metal::sin; using metal::sinh;
using metal::sinpi; using metal::sqrt; using metal::tan; using metal::tanh; using metal::tanpi; using metal::trunc;
using metal::abs; using metal::step; using metal::mix; using metal::smoothstep;
} // namespace fast
namespace precise {
using namespace ::metal::fast;
} // namespace precise

} // namespace metal

// ---- the constants of <metal_math> / <metal_limits> (macros in MSL too) ------------------------------------------
#define MAXFLOAT 0x1.fffffep+127f
#define HUGE_VALF __builtin_inff()
#define HUGE_VALH (::metal::numeric_limits<::metal::half>::infinity())
#define INFINITY __builtin_inff()
#define NAN __builtin_nanf("")
#define FLT_MAX 0x1.fffffep+127f
#define FLT_MIN 0x1p-126f
#define FLT_EPSILON 0x1p-23f
#define FLT_MANT_DIG 24
#define FLT_MAX_EXP 128
#define FLT_MIN_EXP (-125)
#define HALF_MAX (::metal::numeric_limits<::metal::half>::max())
#define HALF_MIN (::metal::numeric_limits<::metal::half>::min())
#define HALF_EPSILON (::metal::numeric_limits<::metal::half>::epsilon())
#define CHAR_BIT 8
#define SCHAR_MAX 127
#define SCHAR_MIN (-128)
#define UCHAR_MAX 255
#define CHAR_MAX 127
#define CHAR_MIN (-128)
#define SHRT_MAX 32767
#define SHRT_MIN (-32768)
#define USHRT_MAX 65535
#define INT_MAX 2147483647
#define INT_MIN (-2147483647 - 1)
#define UINT_MAX 4294967295u
#define LONG_MAX 9223372036854775807L
#define LONG_MIN (-9223372036854775807L - 1)
#define ULONG_MAX 18446744073709551615ul
#define M_E_F 2.71828182845904523536f
#define M_LOG2E_F 1.44269504088896340736f
#define M_LOG10E_F 0.434294481903251827651f
#define M_LN2_F 0.693147180559945309417f
#define M_LN10_F 2.30258509299404568402f
#define M_PI_F 3.14159265358979323846f
#define M_PI_2_F 1.57079632679489661923f
#define M_PI_4_F 0.785398163397448309616f
#define M_1_PI_F 0.318309886183790671538f
#define M_2_PI_F 0.636619772367581343076f
#define M_2_SQRTPI_F 1.12837916709551257390f
#define M_SQRT2_F 1.41421356237309504880f
#define M_SQRT1_2_F 0.707106781186547524401f
#define M_E_H ((::metal::half)M_E_F)
#define M_LOG2E_H ((::metal::half)M_LOG2E_F)
#define M_LOG10E_H ((::metal::half)M_LOG10E_F)
#define M_LN2_H ((::metal::half)M_LN2_F)
#define M_LN10_H ((::metal::half)M_LN10_F)
#define M_PI_H ((::metal::half)M_PI_F)
#define M_PI_2_H ((::metal::half)M_PI_2_F)
#define M_PI_4_H ((::metal::half)M_PI_4_F)
#define M_1_PI_H ((::metal::half)M_1_PI_F)
#define M_2_PI_H ((::metal::half)M_2_PI_F)
#define M_SQRT2_H ((::metal::half)M_SQRT2_F)
#define M_SQRT1_2_H ((::metal::half)M_SQRT1_2_F)

#endif
