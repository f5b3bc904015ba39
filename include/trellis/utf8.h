/*
 * utf8.h — strict UTF-8 validation (no overlongs, no surrogates, nothing above U+10FFFF).
 */
#ifndef TRELLIS_UTF8_H
#define TRELLIS_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Offset of the first byte that starts an invalid sequence, or n when all n bytes are valid UTF-8. */
size_t tr_utf8_invalid_at(const uint8_t *s, size_t n);

/* Length of the valid sequence at s[0..n) (1..4), or 0 if invalid or incomplete. */
int tr_utf8_seq_len(const uint8_t *s, size_t n);

#endif
