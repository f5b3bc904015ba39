/*
 * tokenizer_bpe.c — BPE of one pre-tokenized piece (ENGINE.md §4 steps 4–5) and the per-call piece cache.
 *
 * Symbols are vocab ids from the start: every merge's parts and concatenation are in the vocab (a load check) and
 * vocab strings ↔ ids is a bijection, so merging ids by the (left, right) → (rank, merged id) table is the same as
 * merging strings.  Pairs wait in a binary heap ordered by (rank, position of the left symbol): popping the minimum
 * valid entry is "the adjacent pair with the lowest rank, leftmost on ties".  An entry is valid while its left
 * symbol is alive and the pair it now forms with its right neighbour has the entry's rank; ranks are unique per
 * pair, so that is the same pair (stale entries are dropped).
 */
#include "tokenizer_internal.h"

#include "trellis/alloc.h"

#include <string.h>

#define CACHE_MAX_PIECE 65536u         /* longer pieces are not cached */
#define CACHE_MAX_ENTRIES (1u << 20)   /* per call */
#define NONE UINT32_MAX
#define DEAD INT32_MIN                 /* id of a symbol merged into its left neighbour */

typedef struct heap_ent {
    uint32_t rank, left;
} heap_ent;

typedef struct cache_ent {
    uint64_t hash;
    tok_str key;                       /* key.len = 0: empty slot (pieces are never empty) */
    uint32_t val_off, val_len;
} cache_ent;

struct tok_bpe {
    size_t cap;                        /* symbol arrays, indexed by byte offset in the piece */
    int32_t *id;                       /* DEAD once merged into its left neighbour */
    uint32_t *next, *prev;
    heap_ent *heap;
    size_t hn;
    char *bl;                          /* byte-level form of a piece (ignore_merges) */
    cache_ent *ctab;
    uint32_t cmask, cn;
    tok_pool ckeys;
    tok_ids cvals;
};

int tok_ids_push(tok_ids *l, int32_t id)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 256;
        int32_t *v = tr_realloc(l->v, cap * sizeof *v);
        if (!v)
            return TR_E_NOMEM;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = id;
    return TR_OK;
}

tok_bpe *tok_bpe_new(void) { return tr_calloc(1, sizeof(tok_bpe)); }

void tok_bpe_free(tok_bpe *b)
{
    if (!b)
        return;
    tr_dealloc(b->id);
    tr_dealloc(b->next);
    tr_dealloc(b->prev);
    tr_dealloc(b->heap);
    tr_dealloc(b->bl);
    tr_dealloc(b->ctab);
    tr_dealloc(b->ckeys.data);
    tr_dealloc(b->cvals.v);
    tr_dealloc(b);
}

/* Symbol arrays for n bytes, the heap for its at most 3n entries (n - 1 initial pairs, 2 per merge), and 2n bytes
 * of byte-level form. */
static int reserve(tok_bpe *b, size_t n)
{
    if (n <= b->cap)
        return TR_OK;
    size_t cap = n < 64 ? 64 : n;
    int32_t *id = tr_realloc(b->id, cap * sizeof *id);
    b->id = id ? id : b->id;
    uint32_t *next = tr_realloc(b->next, cap * sizeof *next);
    b->next = next ? next : b->next;
    uint32_t *prev = tr_realloc(b->prev, cap * sizeof *prev);
    b->prev = prev ? prev : b->prev;
    heap_ent *heap = tr_realloc(b->heap, 3 * cap * sizeof *heap);
    b->heap = heap ? heap : b->heap;
    char *bl = tr_realloc(b->bl, 2 * cap);
    b->bl = bl ? bl : b->bl;
    if (!id || !next || !prev || !heap || !bl)
        return TR_E_NOMEM;
    b->cap = cap;
    return TR_OK;
}

/* ---- the pair heap ------------------------------------------------------------------------------------------- */

static int heap_less(const heap_ent *x, const heap_ent *y)
{
    return x->rank < y->rank || (x->rank == y->rank && x->left < y->left);
}

static void heap_push(tok_bpe *b, heap_ent e)
{
    size_t i = b->hn++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&e, &b->heap[p]))
            break;
        b->heap[i] = b->heap[p];
        i = p;
    }
    b->heap[i] = e;
}

static heap_ent heap_pop(tok_bpe *b)
{
    heap_ent top = b->heap[0], last = b->heap[--b->hn];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= b->hn)
            break;
        if (c + 1 < b->hn && heap_less(&b->heap[c + 1], &b->heap[c]))
            c++;
        if (!heap_less(&b->heap[c], &last))
            break;
        b->heap[i] = b->heap[c];
        i = c;
    }
    if (b->hn)
        b->heap[i] = last;
    return top;
}

/* The merge of symbol i with its right neighbour, or NULL (no neighbour, no rank, a dead or unknown symbol). */
static const tok_merge *pair_at(const tr_tokenizer *t, const tok_bpe *b, size_t n, uint32_t i)
{
    if (b->next[i] >= n || b->id[i] < 0 || b->id[b->next[i]] < 0)
        return NULL;
    return tok_merge_find(t, b->id[i], b->id[b->next[i]]);
}

/* Queue the pair at symbol i if it has a rank. */
static void push_pair(const tr_tokenizer *t, tok_bpe *b, size_t n, uint32_t i)
{
    const tok_merge *m = pair_at(t, b, n, i);
    if (m)
        heap_push(b, (heap_ent){m->rank, i});
}

static void merge(const tr_tokenizer *t, tok_bpe *b, size_t n, uint32_t l, const tok_merge *m)
{
    uint32_t r = b->next[l];
    b->id[l] = m->id;
    b->id[r] = DEAD;
    b->next[l] = b->next[r];
    if (b->next[r] < n)
        b->prev[b->next[r]] = l;
    if (b->prev[l] != NONE)
        push_pair(t, b, n, b->prev[l]);
    push_pair(t, b, n, l);
}

/* ---- one piece ----------------------------------------------------------------------------------------------- */

/* A symbol without a vocab id (a byte symbol missing from the vocab) becomes unk_token; with fuse_unk, a run of
 * them becomes one unk_token (HF's fuse_unk). */
static int emit(const tr_tokenizer *t, int32_t id, int *prev_unk, tok_ids *out)
{
    if (id >= 0) {
        *prev_unk = 0;
        return tok_ids_push(out, id);
    }
    int fused = t->fuse_unk && *prev_unk;
    *prev_unk = 1;
    return fused ? TR_OK : tok_ids_push(out, t->unk_id);
}

static int bpe_run(const tr_tokenizer *t, tok_bpe *b, const uint8_t *p, size_t n, tok_ids *out)
{
    if (reserve(b, n) != TR_OK)
        return TR_E_NOMEM;
    if (t->ignore_merges) {   /* ENGINE.md §4: a piece whose whole symbol string is in the vocab is emitted */
        int32_t whole = tok_vocab_find(t, b->bl, tok_byte_level(p, n, b->bl));
        if (whole >= 0)
            return tok_ids_push(out, whole);
    }
    for (uint32_t i = 0; i < n; i++) {
        b->id[i] = t->byte_id[p[i]];
        b->next[i] = i + 1;
        b->prev[i] = i ? i - 1 : NONE;
    }
    b->hn = 0;
    for (uint32_t i = 0; i + 1 < n; i++)
        push_pair(t, b, n, i);
    while (b->hn) {
        heap_ent e = heap_pop(b);
        const tok_merge *m = pair_at(t, b, n, e.left);
        if (m && m->rank == e.rank)
            merge(t, b, n, e.left, m);
    }
    int prev_unk = 0, rc = TR_OK;
    for (uint32_t i = 0; i < n && rc == TR_OK; i = b->next[i])
        rc = emit(t, b->id[i], &prev_unk, out);
    return rc;
}

/* ---- the piece cache ----------------------------------------------------------------------------------------- */

static cache_ent *cache_slot(tok_bpe *b, uint64_t h, const uint8_t *p, size_t n)
{
    for (uint32_t i = (uint32_t)h & b->cmask;; i = (i + 1) & b->cmask) {
        cache_ent *e = &b->ctab[i];
        if (!e->key.len || (e->hash == h && e->key.len == n && !memcmp(b->ckeys.data + e->key.off, p, n)))
            return e;
    }
}

static int cache_grow(tok_bpe *b)
{
    uint32_t cap = b->ctab ? 2 * (b->cmask + 1) : 4096;
    cache_ent *old = b->ctab, *tab = tr_calloc(cap, sizeof *tab);
    if (!tab)
        return TR_E_NOMEM;
    uint32_t old_cap = old ? b->cmask + 1 : 0;
    b->ctab = tab;
    b->cmask = cap - 1;
    for (uint32_t i = 0; i < old_cap; i++)
        if (old[i].key.len) {
            uint32_t j = (uint32_t)old[i].hash & b->cmask;
            while (tab[j].key.len)
                j = (j + 1) & b->cmask;
            tab[j] = old[i];
        }
    tr_dealloc(old);
    return TR_OK;
}

static int cache_put(tok_bpe *b, uint64_t h, const uint8_t *p, size_t n, const int32_t *ids, size_t k)
{
    if (b->cn >= CACHE_MAX_ENTRIES)
        return TR_OK;
    if ((!b->ctab || 2 * (b->cn + 1) > b->cmask + 1) && cache_grow(b) != TR_OK)
        return TR_E_NOMEM;
    cache_ent *e = cache_slot(b, h, p, n);
    e->hash = h;
    e->val_off = (uint32_t)b->cvals.n;
    e->val_len = (uint32_t)k;
    for (size_t i = 0; i < k; i++)
        if (tok_ids_push(&b->cvals, ids[i]) != TR_OK)
            return TR_E_NOMEM;
    if (tok_pool_add(&b->ckeys, p, n, &e->key) != TR_OK) {
        e->key.len = 0;
        return TR_E_NOMEM;
    }
    b->cn++;
    return TR_OK;
}

int tok_bpe_piece(const tr_tokenizer *t, tok_bpe *b, const uint8_t *p, size_t n, tok_ids *out)
{
    if (n == 1) {
        int prev_unk = 0;
        return emit(t, t->byte_id[p[0]], &prev_unk, out);
    }
    uint64_t h = 0;
    if (n <= CACHE_MAX_PIECE && b->ctab) {
        h = tok_hash_bytes(p, n);
        const cache_ent *e = cache_slot(b, h, p, n);
        if (e->key.len) {
            for (uint32_t i = 0; i < e->val_len; i++)
                if (tok_ids_push(out, b->cvals.v[e->val_off + i]) != TR_OK)
                    return TR_E_NOMEM;
            return TR_OK;
        }
    }
    size_t start = out->n;
    int rc = bpe_run(t, b, p, n, out);
    if (rc != TR_OK || n > CACHE_MAX_PIECE)
        return rc;
    if (!b->ctab)
        h = tok_hash_bytes(p, n);
    return cache_put(b, h, p, n, out->v + start, out->n - start);
}
