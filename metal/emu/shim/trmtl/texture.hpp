// trmtl/texture.hpp — texture1d / texture2d / texture2d_array with read, write, sample (nearest and linear filtering,
// normalized or pixel coordinates, clamp_to_edge / clamp_to_zero / clamp_to_border / repeat / mirrored_repeat), and
// sampler (constexpr in the source or bound with [[sampler(n)]]).  Linear filtering is computed in fp32 (METAL.md
// §3: approximate, so texture-filtered results are TOLERANT).  One mip level; lod arguments are ignored.
#ifndef TRMTL_TEXTURE_HPP
#define TRMTL_TEXTURE_HPP

#include "math.hpp"

namespace metal {

enum class access { sample, read, write, read_write };
enum class coord { normalized, pixel };
enum class filter { nearest, linear };
enum class mag_filter { nearest, linear };
enum class min_filter { nearest, linear };
enum class mip_filter { none, nearest, linear };
enum class address { clamp_to_edge, clamp_to_zero, clamp_to_border, repeat, mirrored_repeat };
enum class s_address { clamp_to_edge, clamp_to_zero, clamp_to_border, repeat, mirrored_repeat };
enum class t_address { clamp_to_edge, clamp_to_zero, clamp_to_border, repeat, mirrored_repeat };
enum class r_address { clamp_to_edge, clamp_to_zero, clamp_to_border, repeat, mirrored_repeat };
enum class border_color { transparent_black, opaque_black, opaque_white };
enum class compare_func { none, less, less_equal, greater, greater_equal, equal, not_equal, always, never };

struct sampler {
    trmtl_sampler s_;
    constexpr sampler() : s_{TRMTL_FILTER_NEAREST, TRMTL_FILTER_NEAREST, 0, 0, 0, 1, 0, 0} {}
    constexpr sampler(const trmtl_sampler &s) : s_(s) {}
    template <class A, class... R> constexpr sampler(A a, R... r) : sampler()
    {
        set(a);
        (set(r), ...);
    }

  private:
    constexpr void set(coord c) { s_.normalized = c == coord::normalized; }
    constexpr void set(filter f) { s_.mag_filter = s_.min_filter = (uint8_t)f; }
    constexpr void set(mag_filter f) { s_.mag_filter = (uint8_t)f; }
    constexpr void set(min_filter f) { s_.min_filter = (uint8_t)f; }
    constexpr void set(mip_filter) {}
    constexpr void set(address a) { s_.s_address = s_.t_address = s_.r_address = (uint8_t)a; }
    constexpr void set(s_address a) { s_.s_address = (uint8_t)a; }
    constexpr void set(t_address a) { s_.t_address = (uint8_t)a; }
    constexpr void set(r_address a) { s_.r_address = (uint8_t)a; }
    constexpr void set(border_color b) { s_.border_white = b == border_color::opaque_white; }
    constexpr void set(compare_func) {}
};

namespace __trmtl {
struct texel {
    float f[4];
    int i[4];
    uint u[4];
};
inline uint32_t pf_bytes(uint32_t f)
{
    switch (f) {
    case TRMTL_PF_R32F: case TRMTL_PF_R32U: case TRMTL_PF_R32I: case TRMTL_PF_RG16F: case TRMTL_PF_RGBA8UNORM: return 4;
    case TRMTL_PF_RG32F: case TRMTL_PF_RG32U: case TRMTL_PF_RG32I: case TRMTL_PF_RGBA16F: return 8;
    case TRMTL_PF_RGBA32F: case TRMTL_PF_RGBA32U: case TRMTL_PF_RGBA32I: return 16;
    case TRMTL_PF_R16F: case TRMTL_PF_R16U: case TRMTL_PF_R16I: case TRMTL_PF_RG8UNORM: return 2;
    default: return 1;
    }
}
inline int pf_channels(uint32_t f)
{
    switch (f) {
    case TRMTL_PF_RG32F: case TRMTL_PF_RG16F: case TRMTL_PF_RG8UNORM: case TRMTL_PF_RG32U: case TRMTL_PF_RG32I: return 2;
    case TRMTL_PF_RGBA32F: case TRMTL_PF_RGBA16F: case TRMTL_PF_RGBA8UNORM: case TRMTL_PF_RGBA32U:
    case TRMTL_PF_RGBA32I: return 4;
    default: return 1;
    }
}
inline unsigned char *texel_ptr(const trmtl_texture *t, uint x, uint y, uint s)
{
    size_t rb = t->row_bytes ? t->row_bytes : (size_t)t->width * pf_bytes(t->format);
    size_t sb = t->slice_bytes ? t->slice_bytes : rb * (t->height ? t->height : 1);
    return (unsigned char *)t->data + s * sb + y * rb + (size_t)x * pf_bytes(t->format);
}
// Channels missing from the format read as 0 (alpha as 1).
inline texel fetch(const trmtl_texture *t, uint x, uint y, uint s)
{
    texel r;
    for (int c = 0; c < 4; c++) {
        r.f[c] = c == 3 ? 1.0f : 0.0f;
        r.i[c] = r.u[c] = c == 3 ? 1 : 0;
    }
    unsigned char *p = texel_ptr(t, x, y, s);
    int n = pf_channels(t->format);
    for (int c = 0; c < n; c++) {
        switch (t->format) {
        case TRMTL_PF_R32F: case TRMTL_PF_RG32F: case TRMTL_PF_RGBA32F: __builtin_memcpy(&r.f[c], p + 4 * c, 4); break;
        case TRMTL_PF_R16F: case TRMTL_PF_RG16F: case TRMTL_PF_RGBA16F: {
            half h;
            __builtin_memcpy(&h, p + 2 * c, 2);
            r.f[c] = float(h);
            break;
        }
        case TRMTL_PF_R8UNORM: case TRMTL_PF_RG8UNORM: case TRMTL_PF_RGBA8UNORM: r.f[c] = float(p[c]) / 255.0f; break;
        case TRMTL_PF_R32U: case TRMTL_PF_RG32U: case TRMTL_PF_RGBA32U: __builtin_memcpy(&r.u[c], p + 4 * c, 4); break;
        case TRMTL_PF_R32I: case TRMTL_PF_RG32I: case TRMTL_PF_RGBA32I: __builtin_memcpy(&r.i[c], p + 4 * c, 4); break;
        case TRMTL_PF_R16U: { ushort v; __builtin_memcpy(&v, p, 2); r.u[c] = v; break; }
        case TRMTL_PF_R16I: { short v; __builtin_memcpy(&v, p, 2); r.i[c] = v; break; }
        case TRMTL_PF_R8U: r.u[c] = p[0]; break;
        case TRMTL_PF_R8I: r.i[c] = (signed char)p[0]; break;
        default: break;
        }
    }
    // Integer formats: keep the three views consistent.
    for (int c = 0; c < 4; c++) {
        if (t->format == TRMTL_PF_R32U || t->format == TRMTL_PF_RG32U || t->format == TRMTL_PF_RGBA32U ||
            t->format == TRMTL_PF_R16U || t->format == TRMTL_PF_R8U)
            r.i[c] = (int)r.u[c];
        else if (t->format == TRMTL_PF_R32I || t->format == TRMTL_PF_RG32I || t->format == TRMTL_PF_RGBA32I ||
                 t->format == TRMTL_PF_R16I || t->format == TRMTL_PF_R8I)
            r.u[c] = (uint)r.i[c];
    }
    return r;
}
inline void store(const trmtl_texture *t, uint x, uint y, uint s, const float *f, const int *iv)
{
    unsigned char *p = texel_ptr(t, x, y, s);
    int n = pf_channels(t->format);
    for (int c = 0; c < n; c++) {
        switch (t->format) {
        case TRMTL_PF_R32F: case TRMTL_PF_RG32F: case TRMTL_PF_RGBA32F: __builtin_memcpy(p + 4 * c, &f[c], 4); break;
        case TRMTL_PF_R16F: case TRMTL_PF_RG16F: case TRMTL_PF_RGBA16F: {
            half h = half(f[c]);
            __builtin_memcpy(p + 2 * c, &h, 2);
            break;
        }
        case TRMTL_PF_R8UNORM: case TRMTL_PF_RG8UNORM: case TRMTL_PF_RGBA8UNORM:
            p[c] = (unsigned char)__builtin_rintf(__builtin_fminf(__builtin_fmaxf(f[c], 0.0f), 1.0f) * 255.0f);
            break;
        case TRMTL_PF_R32U: case TRMTL_PF_RG32U: case TRMTL_PF_RGBA32U: case TRMTL_PF_R32I: case TRMTL_PF_RG32I:
        case TRMTL_PF_RGBA32I: __builtin_memcpy(p + 4 * c, &iv[c], 4); break;
        case TRMTL_PF_R16U: case TRMTL_PF_R16I: { short v = (short)iv[c]; __builtin_memcpy(p, &v, 2); break; }
        default: p[0] = (unsigned char)iv[c]; break;
        }
    }
}
// Address mode applied to integer coordinate i in [0,n); returns -1 for "outside" (clamp_to_zero / border).
inline int wrap(int i, int n, uint8_t mode)
{
    switch (mode) {
    case TRMTL_ADDR_REPEAT: return ((i % n) + n) % n;
    case TRMTL_ADDR_MIRRORED_REPEAT: {
        int p = ((i % (2 * n)) + 2 * n) % (2 * n);
        return p < n ? p : 2 * n - 1 - p;
    }
    case TRMTL_ADDR_CLAMP_TO_ZERO: case TRMTL_ADDR_CLAMP_TO_BORDER: return i < 0 || i >= n ? -1 : i;
    default: return i < 0 ? 0 : i >= n ? n - 1 : i;
    }
}
inline void fetch_f(const trmtl_texture *t, const trmtl_sampler &s, int x, int y, uint sl, float *out)
{
    int xi = wrap(x, (int)t->width, s.s_address);
    int yi = wrap(y, (int)(t->height ? t->height : 1), s.t_address);
    if (xi < 0 || yi < 0) {
        float b = s.border_white && s.s_address == TRMTL_ADDR_CLAMP_TO_BORDER ? 1.0f : 0.0f;
        for (int c = 0; c < 4; c++)
            out[c] = b;
        return;
    }
    texel tx = fetch(t, (uint)xi, (uint)yi, sl);
    bool isint = t->format >= TRMTL_PF_R32U;
    for (int c = 0; c < 4; c++)
        out[c] = isint ? float(tx.i[c]) : tx.f[c];
}
// Sample at (u, v) (already in texel units when !normalized): nearest or bilinear (fp32), dims 1 or 2.
inline void sample(const trmtl_texture *t, const trmtl_sampler &s, float u, float v, uint sl, int dims, float *out)
{
    float w = float(t->width), h = float(t->height ? t->height : 1);
    if (s.normalized) {
        u *= w;
        v *= h;
    }
    if (dims == 1)
        v = 0.5f;
    if (s.mag_filter == TRMTL_FILTER_NEAREST) {
        fetch_f(t, s, (int)__builtin_floorf(u), (int)__builtin_floorf(v), sl, out);
        return;
    }
    float x = u - 0.5f, y = v - 0.5f;
    float x0 = __builtin_floorf(x), y0 = __builtin_floorf(y);
    float fx = x - x0, fy = y - y0;
    float a[4], b[4], c[4], d[4];
    fetch_f(t, s, (int)x0, (int)y0, sl, a);
    fetch_f(t, s, (int)x0 + 1, (int)y0, sl, b);
    if (dims == 1) {
        for (int k = 0; k < 4; k++)
            out[k] = a[k] + fx * (b[k] - a[k]);
        return;
    }
    fetch_f(t, s, (int)x0, (int)y0 + 1, sl, c);
    fetch_f(t, s, (int)x0 + 1, (int)y0 + 1, sl, d);
    for (int k = 0; k < 4; k++) {
        float top = a[k] + fx * (b[k] - a[k]), bot = c[k] + fx * (d[k] - c[k]);
        out[k] = top + fy * (bot - top);
    }
}
template <class T> inline vec<T, 4> to_vec(const texel &tx, uint32_t format)
{
    vec<T, 4> r;
    bool isint = format >= TRMTL_PF_R32U;
    for (int c = 0; c < 4; c++) {
        if constexpr (is_fp_t<T>::value)
            r[c] = T(isint ? float(tx.i[c]) : tx.f[c]);
        else if constexpr (is_signed_t<T>::value)
            r[c] = T(tx.i[c]);
        else
            r[c] = T(tx.u[c]);
    }
    return r;
}
template <class T> inline void from_vec(const trmtl_texture *t, uint x, uint y, uint s, const vec<T, 4> &v)
{
    float f[4];
    int iv[4];
    for (int c = 0; c < 4; c++) {
        f[c] = float(v[c]);
        iv[c] = int(v[c]);
    }
    store(t, x, y, s, f, iv);
}
template <class T> inline vec<T, 4> sampled(const float *f)
{
    return vec<T, 4>(T(f[0]), T(f[1]), T(f[2]), T(f[3]));
}
} // namespace __trmtl

template <class T, access A = access::sample> struct texture1d {
    const trmtl_texture *t_;
    texture1d(const trmtl_texture *t = nullptr) : t_(t) {}
    template <class C> vec<T, 4> read(C x, uint = 0) const
    {
        return __trmtl::to_vec<T>(__trmtl::fetch(t_, uint(x), 0, 0), t_->format);
    }
    template <class C> void write(vec<T, 4> v, C x, uint = 0) const { __trmtl::from_vec<T>(t_, uint(x), 0, 0, v); }
    vec<T, 4> sample(sampler s, float x) const
    {
        float f[4];
        __trmtl::sample(t_, s.s_, x, 0.0f, 0, 1, f);
        return __trmtl::sampled<T>(f);
    }
    uint get_width(uint = 0) const { return t_->width; }
    uint get_num_mip_levels() const { return 1; }
};
template <class T, access A = access::sample> struct texture2d {
    const trmtl_texture *t_;
    texture2d(const trmtl_texture *t = nullptr) : t_(t) {}
    template <class C> vec<T, 4> read(C c, uint = 0) const
    {
        return __trmtl::to_vec<T>(__trmtl::fetch(t_, uint(c[0]), uint(c[1]), 0), t_->format);
    }
    template <class C> void write(vec<T, 4> v, C c, uint = 0) const
    {
        __trmtl::from_vec<T>(t_, uint(c[0]), uint(c[1]), 0, v);
    }
    template <class C> vec<T, 4> sample(sampler s, C c) const
    {
        float f[4];
        __trmtl::sample(t_, s.s_, float(c[0]), float(c[1]), 0, 2, f);
        return __trmtl::sampled<T>(f);
    }
    uint get_width(uint = 0) const { return t_->width; }
    uint get_height(uint = 0) const { return t_->height; }
    uint get_num_mip_levels() const { return 1; }
};
template <class T, access A = access::sample> struct texture2d_array {
    const trmtl_texture *t_;
    texture2d_array(const trmtl_texture *t = nullptr) : t_(t) {}
    template <class C, class S> vec<T, 4> read(C c, S slice, uint = 0) const
    {
        return __trmtl::to_vec<T>(__trmtl::fetch(t_, uint(c[0]), uint(c[1]), uint(slice)), t_->format);
    }
    template <class C, class S> void write(vec<T, 4> v, C c, S slice, uint = 0) const
    {
        __trmtl::from_vec<T>(t_, uint(c[0]), uint(c[1]), uint(slice), v);
    }
    template <class C, class S> vec<T, 4> sample(sampler s, C c, S slice) const
    {
        float f[4];
        __trmtl::sample(t_, s.s_, float(c[0]), float(c[1]), uint(slice), 2, f);
        return __trmtl::sampled<T>(f);
    }
    uint get_width(uint = 0) const { return t_->width; }
    uint get_height(uint = 0) const { return t_->height; }
    uint get_array_size() const { return t_->array_length; }
    uint get_num_mip_levels() const { return 1; }
};

} // namespace metal

#endif
