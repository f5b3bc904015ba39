// trmtl/sync.hpp — barriers (scheduling points) and simdgroup / quadgroup collectives as rendezvous of the active
// lanes of a 32-lane simdgroup (METAL.md §3): reductions in the fixed xor-butterfly order (offsets 16, 8, 4, 2, 1;
// quads 2, 1), inactive lanes contribute the identity, prefix operations run in ascending lane order, a shuffle from
// an inactive or out-of-range lane returns the caller's own value.
#ifndef TRMTL_SYNC_HPP
#define TRMTL_SYNC_HPP

#include "math.hpp"

namespace metal {

enum class mem_flags : unsigned {
    mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4, mem_threadgroup_imageblock = 8,
    mem_object_data = 16
};
constexpr mem_flags operator|(mem_flags a, mem_flags b) { return mem_flags(unsigned(a) | unsigned(b)); }
constexpr mem_flags operator&(mem_flags a, mem_flags b) { return mem_flags(unsigned(a) & unsigned(b)); }

enum memory_order {
    memory_order_relaxed = 0, memory_order_consume, memory_order_acquire, memory_order_release,
    memory_order_acq_rel, memory_order_seq_cst
};
enum class thread_scope { thread_scope_thread, thread_scope_simdgroup, thread_scope_threadgroup, thread_scope_device };
using enum thread_scope;

inline void threadgroup_barrier(mem_flags = mem_flags::mem_none, __trmtl::site s = __trmtl::site::here())
{
    trmtl_site cs = s.c_site();
    __trmtl::api->barrier(&cs);
}
inline void atomic_thread_fence(mem_flags = mem_flags::mem_none, memory_order = memory_order_seq_cst,
                                thread_scope = thread_scope::thread_scope_device)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

namespace __trmtl {
// One rendezvous: Rec is this lane's record, Resolve a captureless callable Resolve{}(Rec *const *recs, mask).
template <class Resolve, class Rec> inline void rdv(const site &s, int kind, Rec &r)
{
    trmtl_site cs = s.c_site();
    api->rendezvous(
        &cs, kind, &r, [](void *const *d, uint32_t m, void *) { Resolve{}((Rec *const *)d, m); }, nullptr);
}
inline void sbarrier(const site &s)
{
    int dummy = 0;
    trmtl_site cs = s.c_site();
    api->rendezvous(&cs, TRMTL_RDV_SIMD_BARRIER, &dummy, [](void *const *, uint32_t, void *) {}, nullptr);
}

template <class T> struct scal { typedef elem_t<T> type; };
struct op_sum {
    template <class T> static T ident() { return T(is_fp_t<elem_t<T>>::value ? elem_t<T>(-0.0f) : elem_t<T>(0)); }
    template <class T> static T apply(const T &a, const T &b) { return T(a + b); }
};
struct op_product {
    template <class T> static T ident() { return T(elem_t<T>(1)); }
    template <class T> static T apply(const T &a, const T &b) { return T(a * b); }
};
struct op_min {
    template <class T> static T ident()
    {
        typedef elem_t<T> E;
        if constexpr (is_fp_t<E>::value)
            return T(numeric_limits<E>::infinity());
        else
            return T(numeric_limits<E>::max());
    }
    template <class T> static T apply(const T &a, const T &b) { return T(metal::min(a, b)); }
};
struct op_max {
    template <class T> static T ident()
    {
        typedef elem_t<T> E;
        if constexpr (is_fp_t<E>::value)
            return T(E(-numeric_limits<E>::infinity()));
        else
            return T(numeric_limits<E>::lowest());
    }
    template <class T> static T apply(const T &a, const T &b) { return T(metal::max(a, b)); }
};
struct op_and {
    template <class T> static T ident() { return T(elem_t<T>(~elem_t<T>(0))); }
    template <class T> static T apply(const T &a, const T &b) { return T(a & b); }
};
struct op_or {
    template <class T> static T ident() { return T(elem_t<T>(0)); }
    template <class T> static T apply(const T &a, const T &b) { return T(a | b); }
};
struct op_xor {
    template <class T> static T ident() { return T(elem_t<T>(0)); }
    template <class T> static T apply(const T &a, const T &b) { return T(a ^ b); }
};

template <class T> struct red_rec {
    T in, out;
};
// Butterfly reduction over lanes [0, 32) with offsets from `first` down to 1 (16 for simdgroups, 2 for quads).
template <class Op, class T, int First> struct red_resolve {
    void operator()(red_rec<T> *const *d, uint32_t m) const
    {
        T v[32], w[32];
        for (int l = 0; l < 32; l++)
            v[l] = (m >> l & 1u) ? d[l]->in : Op::template ident<T>();
        for (int o = First; o; o >>= 1) {
            for (int l = 0; l < 32; l++)
                w[l] = Op::apply(v[l], v[l ^ o]);
            for (int l = 0; l < 32; l++)
                v[l] = w[l];
        }
        for (int l = 0; l < 32; l++)
            if (m >> l & 1u)
                d[l]->out = v[l];
    }
};
template <class Op, class T, bool Inclusive, int Group> struct prefix_resolve {
    void operator()(red_rec<T> *const *d, uint32_t m) const
    {
        for (int g = 0; g < 32; g += Group) {
            T acc = Op::template ident<T>();
            for (int l = g; l < g + Group; l++) {
                T x = (m >> l & 1u) ? d[l]->in : Op::template ident<T>();
                if (!Inclusive && (m >> l & 1u))
                    d[l]->out = acc;
                acc = Op::apply(acc, x);
                if (Inclusive && (m >> l & 1u))
                    d[l]->out = acc;
            }
        }
    }
};
template <class Op, int First, class T> inline T reduce(const T &x, const site &s)
{
    red_rec<T> r;
    r.in = x;
    rdv<red_resolve<Op, T, First>>(s, TRMTL_RDV_COLLECTIVE, r);
    return r.out;
}
template <class Op, bool Inclusive, int Group, class T> inline T prefix(const T &x, const site &s)
{
    red_rec<T> r;
    r.in = x;
    rdv<prefix_resolve<Op, T, Inclusive, Group>>(s, TRMTL_RDV_COLLECTIVE, r);
    return r.out;
}

// Shuffles: the source lane is computed from the caller's lane l and its argument a.
enum shuf_kind { SH_IDX, SH_DOWN, SH_UP, SH_XOR, SH_ROT_DOWN, SH_ROT_UP, SH_FIRST, SH_QIDX, SH_QDOWN, SH_QUP, SH_QXOR,
                 SH_QROT_DOWN, SH_QROT_UP };
template <class T> struct shuf_rec {
    T in;
    long arg;
    T out;
};
template <class T, int K> struct shuf_resolve {
    void operator()(shuf_rec<T> *const *d, uint32_t m) const
    {
        int first = __builtin_ctz(m);
        for (int l = 0; l < 32; l++) {
            if (!(m >> l & 1u))
                continue;
            long a = d[l]->arg, src;
            int q = l & ~3, ql = l & 3;
            switch (K) {
            case SH_IDX: src = a; break;
            case SH_DOWN: src = l + a; break;
            case SH_UP: src = l - a; break;
            case SH_XOR: src = l ^ a; break;
            case SH_ROT_DOWN: src = (l + a) & 31; break;
            case SH_ROT_UP: src = (l - a) & 31; break;
            case SH_FIRST: src = first; break;
            case SH_QIDX: src = a >= 0 && a < 4 ? q + a : -1; break;
            case SH_QDOWN: src = ql + a < 4 ? l + a : -1; break;
            case SH_QUP: src = ql - a >= 0 ? l - a : -1; break;
            case SH_QXOR: src = q + ((ql ^ a) & 3); break;
            case SH_QROT_DOWN: src = q + ((ql + a) & 3); break;
            default: src = q + ((ql - a) & 3); break;
            }
            d[l]->out = (src >= 0 && src < 32 && (m >> src & 1u)) ? d[src]->in : d[l]->in;
        }
    }
};
template <int K, class T> inline T shuffle(const T &x, long arg, const site &s)
{
    shuf_rec<T> r;
    r.in = x;
    r.arg = arg;
    rdv<shuf_resolve<T, K>>(s, TRMTL_RDV_COLLECTIVE, r);
    return r.out;
}

struct vote_rec {
    bool in;
    uint64_t out, active;
};
template <int Group> struct vote_resolve {
    void operator()(vote_rec *const *d, uint32_t m) const
    {
        uint64_t v = 0;
        for (int l = 0; l < 32; l++)
            if ((m >> l & 1u) && d[l]->in)
                v |= 1ull << l;
        for (int l = 0; l < 32; l++)
            if (m >> l & 1u) {
                uint64_t gm = Group == 32 ? 0xFFFFFFFFull : (0xFull << (l & ~3));
                d[l]->out = v & gm;
                d[l]->active = m & gm;
            }
    }
};
template <int Group> inline vote_rec vote(bool b, const site &s)
{
    vote_rec r;
    r.in = b;
    rdv<vote_resolve<Group>>(s, TRMTL_RDV_COLLECTIVE, r);
    return r;
}
} // namespace __trmtl

inline void simdgroup_barrier(mem_flags = mem_flags::mem_none, __trmtl::site s = __trmtl::site::here())
{
    __trmtl::sbarrier(s);
}

struct simd_vote {
    typedef ulong vote_t;
    vote_t v_, active_;
    explicit constexpr operator vote_t() const { return v_; }
    constexpr bool all() const { return (v_ & active_) == active_; }
    constexpr bool any() const { return v_ != 0; }
};
typedef simd_vote quad_vote;

#define TRMTL_RED(name, op, first)                                                                                     \
    template <class T> inline T name(T x, __trmtl::site s = __trmtl::site::here())                                     \
    {                                                                                                                  \
        return __trmtl::reduce<__trmtl::op, first>(x, s);                                                              \
    }
TRMTL_RED(simd_sum, op_sum, 16)
TRMTL_RED(simd_product, op_product, 16)
TRMTL_RED(simd_min, op_min, 16)
TRMTL_RED(simd_max, op_max, 16)
TRMTL_RED(simd_and, op_and, 16)
TRMTL_RED(simd_or, op_or, 16)
TRMTL_RED(simd_xor, op_xor, 16)
TRMTL_RED(quad_sum, op_sum, 2)
TRMTL_RED(quad_product, op_product, 2)
TRMTL_RED(quad_min, op_min, 2)
TRMTL_RED(quad_max, op_max, 2)
TRMTL_RED(quad_and, op_and, 2)
TRMTL_RED(quad_or, op_or, 2)
TRMTL_RED(quad_xor, op_xor, 2)
#undef TRMTL_RED

#define TRMTL_PREFIX(name, op, incl, group)                                                                            \
    template <class T> inline T name(T x, __trmtl::site s = __trmtl::site::here())                                     \
    {                                                                                                                  \
        return __trmtl::prefix<__trmtl::op, incl, group>(x, s);                                                        \
    }
TRMTL_PREFIX(simd_prefix_inclusive_sum, op_sum, true, 32)
TRMTL_PREFIX(simd_prefix_exclusive_sum, op_sum, false, 32)
TRMTL_PREFIX(simd_prefix_inclusive_product, op_product, true, 32)
TRMTL_PREFIX(simd_prefix_exclusive_product, op_product, false, 32)
TRMTL_PREFIX(quad_prefix_inclusive_sum, op_sum, true, 4)
TRMTL_PREFIX(quad_prefix_exclusive_sum, op_sum, false, 4)
TRMTL_PREFIX(quad_prefix_inclusive_product, op_product, true, 4)
TRMTL_PREFIX(quad_prefix_exclusive_product, op_product, false, 4)
#undef TRMTL_PREFIX

#define TRMTL_SHUF(name, kind)                                                                                         \
    template <class T, class I> inline T name(T x, I a, __trmtl::site s = __trmtl::site::here())                       \
    {                                                                                                                  \
        return __trmtl::shuffle<__trmtl::kind>(x, long(a), s);                                                         \
    }
TRMTL_SHUF(simd_shuffle, SH_IDX)
TRMTL_SHUF(simd_broadcast, SH_IDX)
TRMTL_SHUF(simd_shuffle_down, SH_DOWN)
TRMTL_SHUF(simd_shuffle_up, SH_UP)
TRMTL_SHUF(simd_shuffle_xor, SH_XOR)
TRMTL_SHUF(simd_shuffle_rotate_down, SH_ROT_DOWN)
TRMTL_SHUF(simd_shuffle_rotate_up, SH_ROT_UP)
TRMTL_SHUF(quad_shuffle, SH_QIDX)
TRMTL_SHUF(quad_broadcast, SH_QIDX)
TRMTL_SHUF(quad_shuffle_down, SH_QDOWN)
TRMTL_SHUF(quad_shuffle_up, SH_QUP)
TRMTL_SHUF(quad_shuffle_xor, SH_QXOR)
TRMTL_SHUF(quad_shuffle_rotate_down, SH_QROT_DOWN)
TRMTL_SHUF(quad_shuffle_rotate_up, SH_QROT_UP)
#undef TRMTL_SHUF
template <class T> inline T simd_broadcast_first(T x, __trmtl::site s = __trmtl::site::here())
{
    return __trmtl::shuffle<__trmtl::SH_FIRST>(x, 0, s);
}
// simd_shuffle_and_fill_down/up: lane l takes x from lane l+delta, or `fill` from lane l+delta-32 past the end
// (up: x from l-delta, or fill from l-delta+32).
namespace __trmtl {
template <class T> struct fill_rec {
    T in, fill;
    long arg;
    T out;
};
template <class T, bool Down> struct fill_resolve {
    void operator()(fill_rec<T> *const *d, uint32_t m) const
    {
        for (int l = 0; l < 32; l++) {
            if (!(m >> l & 1u))
                continue;
            long src = Down ? l + d[l]->arg : l - d[l]->arg;
            int from_fill = src >= 32 || src < 0;
            src &= 31;
            d[l]->out = (m >> src & 1u) ? (from_fill ? d[src]->fill : d[src]->in) : d[l]->in;
        }
    }
};
} // namespace __trmtl
template <class T, class I>
inline T simd_shuffle_and_fill_down(T x, T fill, I delta, __trmtl::site s = __trmtl::site::here())
{
    __trmtl::fill_rec<T> r;
    r.in = x;
    r.fill = fill;
    r.arg = long(delta);
    __trmtl::rdv<__trmtl::fill_resolve<T, true>>(s, TRMTL_RDV_COLLECTIVE, r);
    return r.out;
}
template <class T, class I>
inline T simd_shuffle_and_fill_up(T x, T fill, I delta, __trmtl::site s = __trmtl::site::here())
{
    __trmtl::fill_rec<T> r;
    r.in = x;
    r.fill = fill;
    r.arg = long(delta);
    __trmtl::rdv<__trmtl::fill_resolve<T, false>>(s, TRMTL_RDV_COLLECTIVE, r);
    return r.out;
}

inline simd_vote simd_ballot(bool b, __trmtl::site s = __trmtl::site::here())
{
    __trmtl::vote_rec r = __trmtl::vote<32>(b, s);
    return simd_vote{r.out, r.active};
}
inline simd_vote simd_active_threads_mask(__trmtl::site s = __trmtl::site::here()) { return simd_ballot(true, s); }
inline bool simd_all(bool b, __trmtl::site s = __trmtl::site::here())
{
    __trmtl::vote_rec r = __trmtl::vote<32>(b, s);
    return r.out == r.active;
}
inline bool simd_any(bool b, __trmtl::site s = __trmtl::site::here()) { return __trmtl::vote<32>(b, s).out != 0; }
inline bool simd_is_first(__trmtl::site s = __trmtl::site::here())
{
    __trmtl::vote_rec r = __trmtl::vote<32>(true, s);
    uint l = __trmtl::api->simd_lane();
    return (uint)__builtin_ctzll(r.active) == l;
}
inline quad_vote quad_ballot(bool b, __trmtl::site s = __trmtl::site::here())
{
    __trmtl::vote_rec r = __trmtl::vote<4>(b, s);
    uint sh = __trmtl::api->simd_lane() & ~3u;
    return quad_vote{r.out >> sh, r.active >> sh};
}
inline bool quad_all(bool b, __trmtl::site s = __trmtl::site::here())
{
    __trmtl::vote_rec r = __trmtl::vote<4>(b, s);
    return r.out == r.active;
}
inline bool quad_any(bool b, __trmtl::site s = __trmtl::site::here()) { return __trmtl::vote<4>(b, s).out != 0; }
inline bool quad_is_first(__trmtl::site s = __trmtl::site::here())
{
    __trmtl::vote_rec r = __trmtl::vote<4>(true, s);
    return (uint)__builtin_ctzll(r.active) == __trmtl::api->simd_lane();
}

} // namespace metal

#endif
