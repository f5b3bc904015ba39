// trmtl/core.hpp — scalar types (half = _Float16), traits, vec<T,N> with MSL alignment, swizzle proxies, packed
// vectors, generic element-wise operators, matrix<T,C,R>, as_type and numeric limits.  Part of the emulated
// <metal_stdlib> (METAL.md §3).  Header-only, no standard library headers (keeps each kernel file's compile short
// and avoids overload clashes between <cmath> and metal:: math).
#ifndef TRMTL_CORE_HPP
#define TRMTL_CORE_HPP

#include "abi.h"

#if !defined(__FLT16_MAX__)
#error "the Metal emulator needs _Float16 (g++ >= 12 or clang >= 15 on x86-64 with SSE2, or aarch64)"
#endif

namespace metal {

typedef _Float16 half;
typedef unsigned int uint;
typedef unsigned short ushort;
typedef unsigned char uchar;
typedef unsigned long ulong;
typedef decltype(sizeof(0)) size_t;
typedef decltype((char *)0 - (char *)0) ptrdiff_t;

template <class T, int N> struct vec;
template <class T, int N> struct packed_vec;

namespace __trmtl {

// ---- minimal type traits ---------------------------------------------------------------------------------------
template <class T, T v> struct integral_constant {
    static constexpr T value = v;
    constexpr operator T() const { return v; }
};
typedef integral_constant<bool, true> true_type;
typedef integral_constant<bool, false> false_type;
template <class A, class B> struct is_same : false_type {};
template <class A> struct is_same<A, A> : true_type {};
template <class T> struct remove_cv { typedef T type; };
template <class T> struct remove_cv<const T> { typedef T type; };
template <class T> struct remove_cv<volatile T> { typedef T type; };
template <class T> struct remove_cv<const volatile T> { typedef T type; };
template <class T> struct remove_ref { typedef T type; };
template <class T> struct remove_ref<T &> { typedef T type; };
template <class T> struct remove_ref<T &&> { typedef T type; };
template <class T> using rcvref = typename remove_cv<typename remove_ref<T>::type>::type;
template <class T> struct remove_ptr { typedef T type; };
template <class T> struct remove_ptr<T *> { typedef T type; };
template <class T> struct remove_ptr<T *const> { typedef T type; };
template <bool C, class A, class B> struct cond { typedef A type; };
template <class A, class B> struct cond<false, A, B> { typedef B type; };
template <bool C, class T = void> struct enable_if {};
template <class T> struct enable_if<true, T> { typedef T type; };
template <class T> struct is_ptr : false_type {};
template <class T> struct is_ptr<T *> : true_type {};
template <class T> struct is_ptr<T *const> : true_type {};
template <class T> struct is_lref : false_type {};
template <class T> struct is_lref<T &> : true_type {};

template <class T> struct is_int_t : false_type {};
template <> struct is_int_t<bool> : true_type {};
template <> struct is_int_t<char> : true_type {};
template <> struct is_int_t<signed char> : true_type {};
template <> struct is_int_t<unsigned char> : true_type {};
template <> struct is_int_t<short> : true_type {};
template <> struct is_int_t<unsigned short> : true_type {};
template <> struct is_int_t<int> : true_type {};
template <> struct is_int_t<unsigned int> : true_type {};
template <> struct is_int_t<long> : true_type {};
template <> struct is_int_t<unsigned long> : true_type {};
template <> struct is_int_t<long long> : true_type {};
template <> struct is_int_t<unsigned long long> : true_type {};
template <class T> struct is_fp_t : false_type {};
template <> struct is_fp_t<_Float16> : true_type {};
template <> struct is_fp_t<float> : true_type {};
template <> struct is_fp_t<double> : true_type {};
template <class T> struct is_signed_t : integral_constant<bool, (T)-1 < (T)0> {};

template <class T> concept scalar = is_int_t<rcvref<T>>::value || is_fp_t<rcvref<T>>::value;
template <class T> concept fpscalar = is_fp_t<rcvref<T>>::value;
template <class T> concept intscalar = is_int_t<rcvref<T>>::value;

template <class R, class V, int... I> struct swz;

// Vector-like types: vec, packed_vec and swizzle proxies.
template <class T> struct vinfo { static constexpr int n = 0; typedef T elem; };
template <class T, int N> struct vinfo<vec<T, N>> { static constexpr int n = N; typedef T elem; };
template <class T, int N> struct vinfo<packed_vec<T, N>> { static constexpr int n = N; typedef T elem; };
template <class R, class V, int... I> struct vinfo<swz<R, V, I...>> {
    static constexpr int n = sizeof...(I);
    typedef typename vinfo<R>::elem elem;
};
template <class T> concept vecish = vinfo<rcvref<T>>::n > 0;
template <class T> constexpr int ncomp() { return vecish<T> ? vinfo<rcvref<T>>::n : 1; }
template <class T> using elem_t = typename cond<vecish<T>, typename vinfo<rcvref<T>>::elem, rcvref<T>>::type;

template <class A> constexpr auto el(const A &a, int i)
{
    if constexpr (vecish<A>)
        return a[i];
    else
        return a;
}

// The element type of a binary element-wise operation: the vector's element type for vector ⊕ scalar (the scalar
// is converted, as MSL does), the usual arithmetic conversion for two vectors of different element types.
template <class A, class B> struct bin_elem {
    typedef typename cond<vecish<A> && !vecish<B>, elem_t<A>,
                          typename cond<!vecish<A> && vecish<B>, elem_t<B>,
                                        typename cond<is_same<elem_t<A>, elem_t<B>>::value, elem_t<A>,
                                                      decltype(elem_t<A>() + elem_t<B>())>::type>::type>::type type;
};
template <class A, class B> constexpr int bin_n() { return vecish<A> ? ncomp<A>() : ncomp<B>(); }
template <class A, class B> concept vec_operands =
    (vecish<A> || vecish<B>) && (vecish<A> || scalar<A>) && (vecish<B> || scalar<B>) &&
    (!vecish<A> || !vecish<B> || ncomp<A>() == ncomp<B>());

} // namespace __trmtl

// ---- vector storage: the components are real members (v.x, v.r are lvalues without rewriting) ---------------------
template <class T, int N> struct vec_store;
template <class T> struct vec_store<T, 2> {
    union {
        T v_[2];
        struct { T x, y; };
        struct { T r, g; };
    };
};
template <class T> struct vec_store<T, 3> {
    union {
        T v_[4];
        struct { T x, y, z; };
        struct { T r, g, b; };
    };
};
template <class T> struct vec_store<T, 4> {
    union {
        T v_[4];
        struct { T x, y, z, w; };
        struct { T r, g, b, a; };
    };
};

// The read/write proxy returned by a swizzle of a non-const lvalue (v.xy, v.zyx, v.rgb; the rewriter turns `.xy`
// into `.template __sw<0,1>()`).  R is the value type (vec<T,M>), so R's operators apply through ADL.
template <class R, class V, int... I> struct __trmtl::swz {
    V *p;
    typedef typename __trmtl::vinfo<R>::elem T;
    constexpr operator R() const { return R(p->v_[I]...); }
    constexpr T operator[](int i) const
    {
        const int idx[] = {I...};
        return p->v_[idx[i]];
    }
    template <class S> swz &operator=(const S &s)
    {
        R val = R(s);
        int k = 0;
        ((p->v_[I] = val.v_[k++]), ...);
        return *this;
    }
    swz &operator=(const swz &o)
    {
        R val = R(o);
        return *this = val;
    }
    template <class S> swz &operator+=(const S &s) { return *this = R(*this) + s; }
    template <class S> swz &operator-=(const S &s) { return *this = R(*this) - s; }
    template <class S> swz &operator*=(const S &s) { return *this = R(*this) * s; }
    template <class S> swz &operator/=(const S &s) { return *this = R(*this) / s; }
};

template <class T, int N> struct alignas(sizeof(T) * (N == 3 ? 4 : N)) vec : vec_store<T, N> {
    static_assert(N >= 2 && N <= 4, "vec<T,N>: N must be 2, 3 or 4");
    typedef T value_type;
    vec() = default;
    constexpr vec(T s)
    {
        for (int i = 0; i < N; i++)
            this->v_[i] = s;
    }
    template <__trmtl::scalar U>
        requires(!__trmtl::is_same<__trmtl::rcvref<U>, T>::value)
    constexpr vec(U s) : vec(T(s))
    {
    }
    template <class A, class B, class... R>
        requires(__trmtl::ncomp<A>() + __trmtl::ncomp<B>() + (__trmtl::ncomp<R>() + ... + 0) == N)
    constexpr vec(const A &a, const B &b, const R &...r)
    {
        int k = 0;
        put(k, a);
        put(k, b);
        (put(k, r), ...);
    }
    // Explicit element conversion from any vector-like value with N components (float4(h4), float2(gid.xy)).
    template <__trmtl::vecish A>
        requires(__trmtl::ncomp<A>() == N && !__trmtl::is_same<__trmtl::rcvref<A>, vec>::value)
    explicit constexpr vec(const A &a)
    {
        for (int i = 0; i < N; i++)
            this->v_[i] = T(a[i]);
    }
    constexpr vec(const packed_vec<T, N> &p);

    constexpr T &operator[](int i) { return this->v_[i]; }
    constexpr const T &operator[](int i) const { return this->v_[i]; }

    template <int... I> constexpr __trmtl::swz<vec<T, sizeof...(I)>, vec, I...> __sw() & { return {this}; }
    template <int... I> constexpr vec<T, sizeof...(I)> __sw() const & { return vec<T, sizeof...(I)>(this->v_[I]...); }
    template <int... I> constexpr vec<T, sizeof...(I)> __sw() && { return vec<T, sizeof...(I)>(this->v_[I]...); }

#define TRMTL_VEC_COMPOUND(op)                                                                                         \
    template <class S>                                                                                                 \
        requires(__trmtl::scalar<S> || (__trmtl::vecish<S> && __trmtl::ncomp<S>() == N))                             \
    constexpr vec &operator op##=(const S &s)                                                                          \
    {                                                                                                                  \
        for (int i = 0; i < N; i++)                                                                                    \
            this->v_[i] = T(this->v_[i] op T(__trmtl::el(s, i)));                                                      \
        return *this;                                                                                                  \
    }
    TRMTL_VEC_COMPOUND(+)
    TRMTL_VEC_COMPOUND(-)
    TRMTL_VEC_COMPOUND(*)
    TRMTL_VEC_COMPOUND(/)
    TRMTL_VEC_COMPOUND(%)
    TRMTL_VEC_COMPOUND(&)
    TRMTL_VEC_COMPOUND(|)
    TRMTL_VEC_COMPOUND(^)
    TRMTL_VEC_COMPOUND(<<)
    TRMTL_VEC_COMPOUND(>>)
#undef TRMTL_VEC_COMPOUND
    constexpr vec &operator++()
    {
        for (int i = 0; i < N; i++)
            ++this->v_[i];
        return *this;
    }
    constexpr vec &operator--()
    {
        for (int i = 0; i < N; i++)
            --this->v_[i];
        return *this;
    }

  private:
    template <class A> constexpr void put(int &k, const A &a)
    {
        if constexpr (__trmtl::vecish<A>) {
            for (int j = 0; j < __trmtl::ncomp<A>(); j++)
                this->v_[k++] = T(a[j]);
        } else
            this->v_[k++] = T(a);
    }
};

// packed_T3 etc.: no padding, element alignment.
template <class T, int N> struct packed_store;
template <class T> struct packed_store<T, 2> {
    union {
        T v_[2];
        struct { T x, y; };
        struct { T r, g; };
    };
};
template <class T> struct packed_store<T, 3> {
    union {
        T v_[3];
        struct { T x, y, z; };
        struct { T r, g, b; };
    };
};
template <class T> struct packed_store<T, 4> {
    union {
        T v_[4];
        struct { T x, y, z, w; };
        struct { T r, g, b, a; };
    };
};
template <class T, int N> struct packed_vec : packed_store<T, N> {
    packed_vec() = default;
    constexpr packed_vec(const vec<T, N> &v)
    {
        for (int i = 0; i < N; i++)
            this->v_[i] = v.v_[i];
    }
    constexpr packed_vec(T s)
    {
        for (int i = 0; i < N; i++)
            this->v_[i] = s;
    }
    template <class A, class B, class... R>
        requires(__trmtl::ncomp<A>() + __trmtl::ncomp<B>() + (__trmtl::ncomp<R>() + ... + 0) == N)
    constexpr packed_vec(const A &a, const B &b, const R &...r) : packed_vec(vec<T, N>(a, b, r...))
    {
    }
    constexpr operator vec<T, N>() const
    {
        vec<T, N> v;
        for (int i = 0; i < N; i++)
            v.v_[i] = this->v_[i];
        return v;
    }
    constexpr T &operator[](int i) { return this->v_[i]; }
    constexpr const T &operator[](int i) const { return this->v_[i]; }
    template <int... I> constexpr __trmtl::swz<vec<T, sizeof...(I)>, packed_vec, I...> __sw() & { return {this}; }
    template <int... I> constexpr vec<T, sizeof...(I)> __sw() const & { return vec<T, sizeof...(I)>(this->v_[I]...); }
    template <int... I> constexpr vec<T, sizeof...(I)> __sw() && { return vec<T, sizeof...(I)>(this->v_[I]...); }
    template <class S> constexpr packed_vec &operator+=(const S &s) { return *this = vec<T, N>(*this) + s; }
    template <class S> constexpr packed_vec &operator-=(const S &s) { return *this = vec<T, N>(*this) - s; }
    template <class S> constexpr packed_vec &operator*=(const S &s) { return *this = vec<T, N>(*this) * s; }
    template <class S> constexpr packed_vec &operator/=(const S &s) { return *this = vec<T, N>(*this) / s; }
};
template <class T, int N> constexpr vec<T, N>::vec(const packed_vec<T, N> &p)
{
    for (int i = 0; i < N; i++)
        this->v_[i] = p.v_[i];
}

// ---- element-wise operators on vectors (and vector ⊕ scalar) ----------------------------------------------------
#define TRMTL_BINOP(op)                                                                                                \
    template <class A, class B>                                                                                        \
        requires __trmtl::vec_operands<A, B>                                                                           \
    constexpr auto operator op(const A &a, const B &b)                                                                 \
    {                                                                                                                  \
        typedef typename __trmtl::bin_elem<A, B>::type E;                                                              \
        constexpr int N = __trmtl::bin_n<A, B>();                                                                      \
        vec<E, N> r;                                                                                                   \
        for (int i = 0; i < N; i++)                                                                                    \
            r.v_[i] = E(E(__trmtl::el(a, i)) op E(__trmtl::el(b, i)));                                                 \
        return r;                                                                                                      \
    }
TRMTL_BINOP(+)
TRMTL_BINOP(-)
TRMTL_BINOP(*)
TRMTL_BINOP(/)
TRMTL_BINOP(%)
TRMTL_BINOP(&)
TRMTL_BINOP(|)
TRMTL_BINOP(^)
TRMTL_BINOP(<<)
TRMTL_BINOP(>>)
#undef TRMTL_BINOP

#define TRMTL_CMPOP(op)                                                                                                \
    template <class A, class B>                                                                                        \
        requires __trmtl::vec_operands<A, B>                                                                           \
    constexpr auto operator op(const A &a, const B &b)                                                                 \
    {                                                                                                                  \
        typedef typename __trmtl::bin_elem<A, B>::type E;                                                              \
        constexpr int N = __trmtl::bin_n<A, B>();                                                                      \
        vec<bool, N> r;                                                                                                \
        for (int i = 0; i < N; i++)                                                                                    \
            r.v_[i] = E(__trmtl::el(a, i)) op E(__trmtl::el(b, i));                                                    \
        return r;                                                                                                      \
    }
TRMTL_CMPOP(==)
TRMTL_CMPOP(!=)
TRMTL_CMPOP(<)
TRMTL_CMPOP(>)
TRMTL_CMPOP(<=)
TRMTL_CMPOP(>=)
TRMTL_CMPOP(&&)
TRMTL_CMPOP(||)
#undef TRMTL_CMPOP

template <__trmtl::vecish A> constexpr auto operator-(const A &a)
{
    typedef __trmtl::elem_t<A> E;
    vec<E, __trmtl::ncomp<A>()> r;
    for (int i = 0; i < __trmtl::ncomp<A>(); i++)
        r.v_[i] = E(-a[i]);
    return r;
}
template <__trmtl::vecish A> constexpr auto operator+(const A &a)
{
    return vec<__trmtl::elem_t<A>, __trmtl::ncomp<A>()>(a);
}
template <__trmtl::vecish A> constexpr auto operator~(const A &a)
{
    typedef __trmtl::elem_t<A> E;
    vec<E, __trmtl::ncomp<A>()> r;
    for (int i = 0; i < __trmtl::ncomp<A>(); i++)
        r.v_[i] = E(~a[i]);
    return r;
}
template <__trmtl::vecish A> constexpr auto operator!(const A &a)
{
    vec<bool, __trmtl::ncomp<A>()> r;
    for (int i = 0; i < __trmtl::ncomp<A>(); i++)
        r.v_[i] = !a[i];
    return r;
}

// ---- type names ------------------------------------------------------------------------------------------------
#define TRMTL_VEC_NAMES(T, name)                                                                                       \
    typedef vec<T, 2> name##2;                                                                                         \
    typedef vec<T, 3> name##3;                                                                                         \
    typedef vec<T, 4> name##4;                                                                                         \
    typedef packed_vec<T, 2> packed_##name##2;                                                                         \
    typedef packed_vec<T, 3> packed_##name##3;                                                                         \
    typedef packed_vec<T, 4> packed_##name##4;
TRMTL_VEC_NAMES(float, float)
TRMTL_VEC_NAMES(half, half)
TRMTL_VEC_NAMES(int, int)
TRMTL_VEC_NAMES(uint, uint)
TRMTL_VEC_NAMES(short, short)
TRMTL_VEC_NAMES(ushort, ushort)
TRMTL_VEC_NAMES(char, char)
TRMTL_VEC_NAMES(uchar, uchar)
TRMTL_VEC_NAMES(bool, bool)
TRMTL_VEC_NAMES(long, long)
TRMTL_VEC_NAMES(ulong, ulong)
#undef TRMTL_VEC_NAMES

// ---- matrices (column-major, as MSL) ----------------------------------------------------------------------------
template <class T, int C, int R> struct matrix;
template <class X> struct is_matrix : __trmtl::false_type {};
template <class T, int C, int R> struct is_matrix<matrix<T, C, R>> : __trmtl::true_type {};
template <class T, int C, int R> struct matrix {
    vec<T, R> columns[C];
    matrix() = default;
    constexpr explicit matrix(T d)
    {
        for (int c = 0; c < C; c++)
            for (int r = 0; r < R; r++)
                columns[c][r] = c == r ? d : T(0);
    }
    template <class... V>
        requires(sizeof...(V) == C && !(sizeof...(V) == 1 && (is_matrix<V>::value && ...)))
    constexpr matrix(const V &...v) : columns{vec<T, R>(v)...}
    {
    }
    // Element conversion between matrices of the same shape ((half4x4) m, float4x4(h)).
    template <class U>
    explicit constexpr matrix(const matrix<U, C, R> &m)
    {
        for (int c = 0; c < C; c++)
            columns[c] = vec<T, R>(m.columns[c]);
    }
    constexpr vec<T, R> &operator[](int c) { return columns[c]; }
    constexpr const vec<T, R> &operator[](int c) const { return columns[c]; }
};
template <class T, int C, int R> constexpr vec<T, R> operator*(const matrix<T, C, R> &m, const vec<T, C> &v)
{
    vec<T, R> r(T(0));
    for (int c = 0; c < C; c++)
        for (int i = 0; i < R; i++)
            r[i] = T(r[i] + T(m[c][i] * v[c]));
    return r;
}
template <class T, int C, int R> constexpr vec<T, C> operator*(const vec<T, R> &v, const matrix<T, C, R> &m)
{
    vec<T, C> r(T(0));
    for (int c = 0; c < C; c++)
        for (int i = 0; i < R; i++)
            r[c] = T(r[c] + T(v[i] * m[c][i]));
    return r;
}
template <class T, int K, int C, int R>
constexpr matrix<T, C, R> operator*(const matrix<T, K, R> &a, const matrix<T, C, K> &b)
{
    matrix<T, C, R> m;
    for (int c = 0; c < C; c++)
        m[c] = a * b[c];
    return m;
}
template <class T, int C, int R> constexpr matrix<T, R, C> transpose(const matrix<T, C, R> &m)
{
    matrix<T, R, C> t;
    for (int c = 0; c < C; c++)
        for (int r = 0; r < R; r++)
            t[r][c] = m[c][r];
    return t;
}
#define TRMTL_MAT_NAMES(T, name)                                                                                       \
    typedef matrix<T, 2, 2> name##2x2;                                                                                 \
    typedef matrix<T, 2, 3> name##2x3;                                                                                 \
    typedef matrix<T, 2, 4> name##2x4;                                                                                 \
    typedef matrix<T, 3, 2> name##3x2;                                                                                 \
    typedef matrix<T, 3, 3> name##3x3;                                                                                 \
    typedef matrix<T, 3, 4> name##3x4;                                                                                 \
    typedef matrix<T, 4, 2> name##4x2;                                                                                 \
    typedef matrix<T, 4, 3> name##4x3;                                                                                 \
    typedef matrix<T, 4, 4> name##4x4;
TRMTL_MAT_NAMES(float, float)
TRMTL_MAT_NAMES(half, half)
#undef TRMTL_MAT_NAMES

// ---- metal::array -----------------------------------------------------------------------------------------------
template <class T, size_t N> struct array {
    T elems_[N ? N : 1];
    constexpr T &operator[](size_t i) { return elems_[i]; }
    constexpr const T &operator[](size_t i) const { return elems_[i]; }
    constexpr size_t size() const { return N; }
};

// ---- as_type, type traits of <metal_type_traits> -----------------------------------------------------------------
template <class To, class From> constexpr To as_type(const From &f)
{
    static_assert(sizeof(To) == sizeof(From), "as_type: sizes differ");
    return __builtin_bit_cast(To, f);
}
using __trmtl::enable_if;
using __trmtl::false_type;
using __trmtl::integral_constant;
using __trmtl::is_same;
using __trmtl::true_type;
template <bool C, class T = void> using enable_if_t = typename enable_if<C, T>::type;
template <class A, class B> constexpr bool is_same_v = is_same<A, B>::value;
template <bool C, class A, class B> struct conditional { typedef A type; };
template <class A, class B> struct conditional<false, A, B> { typedef B type; };
template <bool C, class A, class B> using conditional_t = typename conditional<C, A, B>::type;
template <class T> struct is_floating_point : integral_constant<bool, __trmtl::is_fp_t<T>::value> {};
template <class T> struct is_integral : integral_constant<bool, __trmtl::is_int_t<T>::value> {};
template <class T> struct is_scalar : integral_constant<bool, __trmtl::scalar<T>> {};
template <class T> struct is_vector : integral_constant<bool, __trmtl::vecish<T>> {};
template <class T> struct is_signed : integral_constant<bool, __trmtl::is_signed_t<T>::value> {};
template <class T> struct is_unsigned : integral_constant<bool, !__trmtl::is_signed_t<T>::value> {};
template <class T> constexpr bool is_floating_point_v = is_floating_point<T>::value;
template <class T> constexpr bool is_integral_v = is_integral<T>::value;
template <class T> constexpr bool is_scalar_v = is_scalar<T>::value;
template <class T> constexpr bool is_vector_v = is_vector<T>::value;
template <class T> constexpr bool is_signed_v = is_signed<T>::value;
template <class T> constexpr bool is_unsigned_v = is_unsigned<T>::value;
template <class T> struct remove_const { typedef T type; };
template <class T> struct remove_const<const T> { typedef T type; };
template <class T> using remove_const_t = typename remove_const<T>::type;
template <class T> using remove_cv_t = typename __trmtl::remove_cv<T>::type;
template <class T> using remove_reference_t = typename __trmtl::remove_ref<T>::type;
template <class T> struct make_unsigned;
template <> struct make_unsigned<int> { typedef uint type; };
template <> struct make_unsigned<uint> { typedef uint type; };
template <> struct make_unsigned<short> { typedef ushort type; };
template <> struct make_unsigned<ushort> { typedef ushort type; };
template <> struct make_unsigned<char> { typedef uchar type; };
template <> struct make_unsigned<uchar> { typedef uchar type; };
template <> struct make_unsigned<long> { typedef ulong type; };
template <> struct make_unsigned<ulong> { typedef ulong type; };
template <class T> using make_unsigned_t = typename make_unsigned<T>::type;
template <class T> struct vec_elements { typedef __trmtl::elem_t<T> type; static constexpr int value = __trmtl::ncomp<T>(); };

// ---- numeric_limits ---------------------------------------------------------------------------------------------
template <class T> struct numeric_limits;
template <> struct numeric_limits<float> {
    static constexpr bool is_specialized = true;
    static constexpr float min() { return 0x1p-126f; }
    static constexpr float max() { return 0x1.fffffep127f; }
    static constexpr float lowest() { return -0x1.fffffep127f; }
    static constexpr float epsilon() { return 0x1p-23f; }
    static constexpr float infinity() { return __builtin_inff(); }
    static constexpr float quiet_NaN() { return __builtin_nanf(""); }
    static constexpr float denorm_min() { return 0x1p-149f; }
};
template <> struct numeric_limits<half> {
    static constexpr bool is_specialized = true;
    static constexpr half min() { return __builtin_bit_cast(half, (ushort)0x0400); }
    static constexpr half max() { return __builtin_bit_cast(half, (ushort)0x7BFF); }
    static constexpr half lowest() { return __builtin_bit_cast(half, (ushort)0xFBFF); }
    static constexpr half epsilon() { return __builtin_bit_cast(half, (ushort)0x1400); }
    static constexpr half infinity() { return __builtin_bit_cast(half, (ushort)0x7C00); }
    static constexpr half quiet_NaN() { return __builtin_bit_cast(half, (ushort)0x7E00); }
    static constexpr half denorm_min() { return __builtin_bit_cast(half, (ushort)0x0001); }
};
#define TRMTL_INT_LIMITS(T, lo, hi)                                                                                    \
    template <> struct numeric_limits<T> {                                                                             \
        static constexpr bool is_specialized = true;                                                                   \
        static constexpr T min() { return lo; }                                                                        \
        static constexpr T max() { return hi; }                                                                        \
        static constexpr T lowest() { return lo; }                                                                     \
    };
TRMTL_INT_LIMITS(char, (char)-128, (char)127)
TRMTL_INT_LIMITS(uchar, (uchar)0, (uchar)255)
TRMTL_INT_LIMITS(short, (short)-32768, (short)32767)
TRMTL_INT_LIMITS(ushort, (ushort)0, (ushort)65535)
TRMTL_INT_LIMITS(int, (int)(-2147483647 - 1), 2147483647)
TRMTL_INT_LIMITS(uint, 0u, 4294967295u)
TRMTL_INT_LIMITS(long, (long)(-9223372036854775807L - 1), 9223372036854775807L)
TRMTL_INT_LIMITS(ulong, 0ul, 18446744073709551615ul)
#undef TRMTL_INT_LIMITS

namespace __trmtl {
// A half from its bits (the rewriter turns `1.5h` into __trmtl_h(0x3E00) with correctly rounded bits).
constexpr half hbits(unsigned short b) { return __builtin_bit_cast(half, b); }

// Source location of a scheduling point; used as a defaulted last argument so it names the caller's line and
// column (GCC: __builtin_source_location, which needs std::source_location::__impl declared; clang: __builtin_LINE
// and __builtin_COLUMN).
} // namespace __trmtl
} // namespace metal
#if !defined(__clang__)
namespace std {
class source_location {
  public:
    struct __impl {
        const char *_M_file_name;
        const char *_M_function_name;
        unsigned _M_line;
        unsigned _M_column;
    };
};
} // namespace std
#endif
namespace metal {
namespace __trmtl {
struct site {
    const char *file;
    unsigned line, column;
#if defined(__clang__)
    static constexpr site here(const char *f = __builtin_FILE(), unsigned l = __builtin_LINE(),
                               unsigned c = __builtin_COLUMN())
    {
        return site{f, l, c};
    }
#else
    static constexpr site here(const void *p = __builtin_source_location())
    {
        return site{((const std::source_location::__impl *)p)->_M_file_name,
                    ((const std::source_location::__impl *)p)->_M_line,
                    ((const std::source_location::__impl *)p)->_M_column};
    }
#endif
    trmtl_site c_site() const { return trmtl_site{file, line, column}; }
};

// The runtime's function table (one per module: each module is one translation unit).
inline const trmtl_rt_api *api;
} // namespace __trmtl

} // namespace metal

// Type names are visible without `using namespace metal;` (as in MSL).
using metal::half;
using metal::uint;
using metal::uchar;
using metal::ushort;
using metal::ulong;
#define TRMTL_GLOBAL_VEC(name)                                                                                         \
    using metal::name##2;                                                                                              \
    using metal::name##3;                                                                                              \
    using metal::name##4;                                                                                              \
    using metal::packed_##name##2;                                                                                     \
    using metal::packed_##name##3;                                                                                     \
    using metal::packed_##name##4;
TRMTL_GLOBAL_VEC(float)
TRMTL_GLOBAL_VEC(half)
TRMTL_GLOBAL_VEC(int)
TRMTL_GLOBAL_VEC(uint)
TRMTL_GLOBAL_VEC(short)
TRMTL_GLOBAL_VEC(ushort)
TRMTL_GLOBAL_VEC(char)
TRMTL_GLOBAL_VEC(uchar)
TRMTL_GLOBAL_VEC(bool)
TRMTL_GLOBAL_VEC(long)
TRMTL_GLOBAL_VEC(ulong)
#undef TRMTL_GLOBAL_VEC
using metal::float2x2;
using metal::float3x3;
using metal::float4x4;
using metal::half2x2;
using metal::half3x3;
using metal::half4x4;

#define __trmtl_h(bits) (::metal::__trmtl::hbits((unsigned short)(bits)))

#endif
