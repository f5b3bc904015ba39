/*
 * utf8.c — strict UTF-8 validation per RFC 3629 (the well-formed byte sequences of Unicode Table 3-7).
 */
#include "trellis/utf8.h"

int tr_utf8_seq_len(const uint8_t *s, size_t n)
{
    if (n == 0)
        return 0;
    uint8_t c = s[0];
    if (c < 0x80)
        return 1;
    int len;
    uint8_t lo = 0x80, hi = 0xBF;          /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;                      /* no overlongs */
        if (c == 0xED)
            hi = 0x9F;                      /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        if (c == 0xF4)
            hi = 0x8F;                      /* <= U+10FFFF */
    } else
        return 0;
    if ((size_t)len > n)
        return 0;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (int i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    return len;
}

size_t tr_utf8_invalid_at(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int len = tr_utf8_seq_len(s + i, n - i);
        if (len == 0)
            return i;
        i += (size_t)len;
    }
    return n;
}
