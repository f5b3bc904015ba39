/*
 * registry.c — the registry's core: names, parameter texts, buffers, case ids and seeds (KERNELS.md §6.1), and the
 * three tiers of parameter points (§5): --quick (each axis value once with the others at their defaults), --full
 * (deterministic greedy all-pairs covering), --exhaustive (the filtered cartesian product, iterated lazily).
 */
#include "trellis/registry.h"
#include "trellis/alloc.h"
#include "trellis/rng.h"

#include "reg_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const class_names[] = {"EXACT", "ORDERED", "TOLERANT"};
static const char *const tier_names[] = {"quick", "full", "exhaustive"};
static const char *const verdict_names[] = {"PASS", "FAIL", "PRECISION_WARNING", "UNSUPPORTED", "RESOURCE_ERROR",
                                            "CRASH", "TIMEOUT"};

const char *tr_class_name(tr_class c) { return (unsigned)c < 3 ? class_names[c] : "?"; }
const char *tr_tier_name(tr_tier t) { return (unsigned)t < 3 ? tier_names[t] : "?"; }
const char *tr_verdict_name(tr_verdict v) { return (unsigned)v < TR_VERDICT_COUNT ? verdict_names[v] : "?"; }

int tr_verdict_parse(const char *name, tr_verdict *out)
{
    for (int i = 0; i < TR_VERDICT_COUNT; i++)
        if (strcmp(name, verdict_names[i]) == 0) {
            *out = (tr_verdict)i;
            return 0;
        }
    return -1;
}

/* ---- parameters ------------------------------------------------------------------------------------------------ */

int tr_params_parse(tr_params *p, const char *text)
{
    size_t len = strlen(text);
    memset(p, 0, sizeof *p);
    if (len >= sizeof p->text)
        return -1;
    memcpy(p->text, text, len + 1);
    memcpy(p->store, text, len + 1);
    if (len == 0)
        return 0;
    for (char *item = p->store; item;) {
        char *next = strchr(item, ';');
        if (next)
            *next++ = '\0';
        char *eq = strchr(item, '=');
        if (!eq || eq == item || p->n >= 48)
            return -1;
        *eq = '\0';
        p->key[p->n] = item;
        p->val[p->n] = eq + 1;
        p->n++;
        item = next;
    }
    return 0;
}

const char *tr_params_str(const tr_params *p, const char *key)
{
    for (int i = 0; i < p->n; i++)
        if (strcmp(p->key[i], key) == 0)
            return p->val[i];
    return NULL;
}

int64_t tr_params_int(const tr_params *p, const char *key, int64_t dflt)
{
    const char *v = tr_params_str(p, key);
    return v ? strtoll(v, NULL, 10) : dflt;
}

double tr_params_real(const tr_params *p, const char *key, double dflt)
{
    const char *v = tr_params_str(p, key);
    return v ? strtod(v, NULL) : dflt;
}

int tr_params_is(const tr_params *p, const char *key, const char *value)
{
    const char *v = tr_params_str(p, key);
    return v && strcmp(v, value) == 0;
}

/* ---- buffers --------------------------------------------------------------------------------------------------- */

uint64_t tr_buf_numel(const tr_buf *b)
{
    uint64_t n = 1;
    for (unsigned d = 0; d < b->ndim; d++)
        n *= b->shape[d];
    return n;
}

tr_buf *tr_bufs_add(tr_bufs *b, const char *name, tr_role role, tr_dtype dt, unsigned ndim, const uint64_t *shape)
{
    if (b->n == b->cap) {
        int cap = b->cap ? 2 * b->cap : 16;
        tr_buf **v = tr_realloc(b->v, (size_t)cap * sizeof *v);
        if (!v)
            return NULL;
        b->v = v;
        b->cap = cap;
    }
    tr_buf *x = tr_calloc(1, sizeof *x);
    if (!x)
        return NULL;
    snprintf(x->name, sizeof x->name, "%s", name);
    x->role = role;
    x->dtype = dt;
    x->ndim = ndim;
    for (unsigned d = 0; d < ndim; d++)
        x->shape[d] = shape[d];
    x->bytes = (size_t)(tr_buf_numel(x) * tr_dtype_size(dt));
    x->data = tr_calloc(x->bytes ? x->bytes : 1, 1);
    if (!x->data) {
        tr_dealloc(x);
        return NULL;
    }
    b->v[b->n++] = x;
    return x;
}

tr_buf *tr_bufs_get(const tr_bufs *b, const char *name)
{
    for (int i = 0; i < b->n; i++)
        if (strcmp(b->v[i]->name, name) == 0)
            return b->v[i];
    return NULL;
}

void tr_bufs_free(tr_bufs *b)
{
    for (int i = 0; i < b->n; i++) {
        tr_dealloc(b->v[i]->data);
        tr_dealloc(b->v[i]);
    }
    tr_dealloc(b->v);
    b->v = NULL;
    b->n = b->cap = 0;
}

void tr_expect_free(tr_expect *e)
{
    for (int i = 0; i < e->canon.n; i++) {
        if (e->hi)
            tr_dealloc(e->hi[i]);
        if (e->B)
            tr_dealloc(e->B[i]);
        if (e->P)
            tr_dealloc(e->P[i]);
    }
    tr_dealloc(e->hi);
    tr_dealloc(e->B);
    tr_dealloc(e->P);
    tr_bufs_free(&e->canon);
    memset(e, 0, sizeof *e);
}

/* ---- registry and cases ------------------------------------------------------------------------------------------ */

size_t tr_registry_count(void) { return reg_op_count; }

const tr_opdef *tr_registry_op(size_t i) { return i < reg_op_count ? reg_ops[i] : NULL; }

const tr_opdef *tr_registry_find(const char *name)
{
    for (size_t i = 0; i < reg_op_count; i++)
        if (strcmp(reg_ops[i]->name, name) == 0)
            return reg_ops[i];
    return NULL;
}

const tr_variant *tr_op_variant(const tr_opdef *op, const char *id)
{
    for (int i = 0; i < op->nvariants; i++)
        if (strcmp(op->variants[i].id, id) == 0)
            return &op->variants[i];
    return NULL;
}

int tr_case_init(tr_case *c, const tr_opdef *op, const tr_variant *v, const char *params, int rep, uint64_t master)
{
    memset(c, 0, sizeof *c);
    c->op = op;
    c->variant = v;
    c->rep = rep;
    c->master_seed = master;
    if (tr_params_parse(&c->params, params) != 0)
        return TR_E_INVALID_PARAM;
    int n = snprintf(c->id, sizeof c->id, "%s/%s/%s/%d", op->name, v->id, params, rep);
    if (n < 0 || (size_t)n >= sizeof c->id)
        return TR_E_INVALID_PARAM;
    c->seed = tr_splitmix64(master ^ tr_fnv1a64_str(c->id));
    c->metal = strcmp(v->backend, "metal") == 0;
    c->metal_math = c->metal ? TR_MATH_RELAXED : TR_MATH_NONE;
    c->acc_f16 = strcmp(v->backend, "ref") && strcmp(v->backend, "cpu") ? v->acc_f16
                                                                        : tr_params_is(&c->params, "acc", "f16");
    return TR_OK;
}

int tr_case_from_id(tr_case *c, const char *id, uint64_t master, tr_error *err)
{
    char buf[TR_CASE_ID_MAX];
    if (strlen(id) >= sizeof buf)
        return tr_fail(err, TR_E_INVALID_PARAM, "case id", "too long");
    strcpy(buf, id);
    char *op = buf, *var = strchr(op, '/');
    char *params = var ? strchr(var + 1, '/') : NULL;
    char *rep = params ? strrchr(params + 1, '/') : NULL;
    if (!var || !params || !rep)
        return tr_fail(err, TR_E_INVALID_PARAM, id, "a case id reads <op>/<variant>/<params>/<rep>");
    *var++ = '\0';
    *params++ = '\0';
    *rep++ = '\0';
    const tr_opdef *o = tr_registry_find(op);
    if (!o)
        return tr_fail(err, TR_E_INVALID_PARAM, id, "unknown op \"%s\"", op);
    const tr_variant *v = tr_op_variant(o, var);
    if (!v)
        return tr_fail(err, TR_E_INVALID_PARAM, id, "op %s has no variant \"%s\"", op, var);
    char *end;
    long r = strtol(rep, &end, 10);
    if (*rep == '\0' || *end != '\0' || r < 0)
        return tr_fail(err, TR_E_INVALID_PARAM, id, "repetition \"%s\" is not a non-negative integer", rep);
    if (tr_case_init(c, o, v, params, (int)r, master) != TR_OK)
        return tr_fail(err, TR_E_INVALID_PARAM, id, "malformed parameters \"%s\"", params);
    return TR_OK;
}

uint64_t tr_case_stream_seed(const tr_case *c, const char *tensor)
{
    return tr_splitmix64(c->seed ^ tr_fnv1a64_str(tensor));
}

/* ---- tiers ------------------------------------------------------------------------------------------------------- */

/* Text of a point given as value indices. */
static void point_text(const tr_opdef *op, const int *idx, char *buf, size_t cap)
{
    size_t at = 0;
    buf[0] = '\0';
    for (int a = 0; a < op->naxes; a++) {
        int n = snprintf(buf + at, cap - at, "%s%s", a ? ";" : "", op->axes[a].values[idx[a]]);
        if (n < 0 || (size_t)n >= cap - at)
            return;
        at += (size_t)n;
    }
}

/* What point generation consults: the op's constraints and, for a variant-aware tier (the metal-emu runner), the
 * variant's declared domain as a further predicate.  With a predicate every search is bounded (GEN_BUDGET point
 * evaluations): a value the domain excludes would otherwise make it walk the whole product of the other axes. */

#define GEN_P0_BUDGET 200000
#define GEN_BUDGET 3000

typedef struct gen {
    const tr_opdef *op;
    tr_tier tier;
    tr_point_pred pred;
    void *ctx;
    long budget;               /* evaluations left in the current search; < 0 unlimited */
} gen;

static int point_valid(gen *g, const int *idx)
{
    if (!g->op->valid && !g->pred)
        return 1;
    char text[TR_CASE_ID_MAX];
    point_text(g->op, idx, text, sizeof text);
    tr_params p;
    if (tr_params_parse(&p, text) != 0 || (g->op->valid && !g->op->valid(&p)))
        return 0;
    return !g->pred || g->pred(g->ctx, &p);
}

static int axis_count(const tr_opdef *op, tr_tier tier, int a)
{
    const tr_axis *ax = &op->axes[a];
    return tier == TR_TIER_QUICK && ax->quick_nvalues > 0 ? ax->quick_nvalues : ax->nvalues;
}

/* Can the partial point (idx[a] < 0 = unset) be completed to a valid point?  Depth-first over unset axes in order;
 * on success idx holds the first completion found.  An exhausted budget counts as "no". */
static int complete(gen *g, int *idx, int from)
{
    int a = from;
    while (a < g->op->naxes && idx[a] >= 0)
        a++;
    if (a == g->op->naxes) {
        if (g->budget == 0)
            return 0;
        if (g->budget > 0)
            g->budget--;
        return point_valid(g, idx);
    }
    for (int v = 0; v < axis_count(g->op, g->tier, a) && g->budget != 0; v++) {
        idx[a] = v;
        if (complete(g, idx, a + 1))
            return 1;
    }
    idx[a] = -1;
    return 0;
}

static int completable(gen *g, const int *partial)
{
    int tmp[TR_MAX_AXES];
    memcpy(tmp, partial, sizeof tmp);
    g->budget = g->pred ? 20 * GEN_BUDGET : -1;
    return complete(g, tmp, 0);
}

typedef struct point_list {
    int *v;                    /* naxes ints per point */
    size_t n, cap;
    int naxes;
} point_list;

static int list_add(point_list *l, const int *idx)
{
    for (size_t i = 0; i < l->n; i++)
        if (memcmp(l->v + i * l->naxes, idx, (size_t)l->naxes * sizeof *idx) == 0)
            return TR_OK;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        int *v = tr_realloc(l->v, cap * (size_t)l->naxes * sizeof *v);
        if (!v)
            return TR_E_NOMEM;
        l->v = v;
        l->cap = cap;
    }
    memcpy(l->v + l->n * l->naxes, idx, (size_t)l->naxes * sizeof *idx);
    l->n++;
    return TR_OK;
}

/* --quick: every axis value once, the other axes at their defaults (or the first values that can complete it). */
static int quick_points_op(gen *g, point_list *l)
{
    const tr_opdef *op = g->op;
    for (int a = 0; a < op->naxes; a++)
        for (int v = 0; v < axis_count(op, TR_TIER_QUICK, a); v++) {
            int idx[TR_MAX_AXES];
            for (int b = 0; b < op->naxes; b++)
                idx[b] = op->axes[b].dflt;
            idx[a] = v;
            if (!point_valid(g, idx)) {
                for (int b = 0; b < op->naxes; b++)
                    idx[b] = b == a ? v : -1;
                for (int b = 0; b < op->naxes; b++) {
                    if (b == a)
                        continue;
                    int chosen = 0;
                    for (int w = 0; w < axis_count(op, TR_TIER_QUICK, b) && !chosen; w++) {
                        idx[b] = w;
                        chosen = completable(g, idx);
                    }
                    if (!chosen)
                        break;
                }
                if (!point_valid(g, idx))
                    continue;   /* value v of axis a can never be used */
            }
            if (list_add(l, idx) != TR_OK)
                return TR_E_NOMEM;
        }
    return TR_OK;
}

/* Points near a base point: the free axes (idx < 0) start at base; try every point that moves d of them off base,
 * d = 0, 1, 2, … (axes and values in listed order) until one is valid or the budget is spent.  1 with idx the point
 * found. */
static int near_rec(gen *g, int *idx, const int *base, const int *free_ax, int nfree, int start, int left)
{
    if (left == 0) {
        if (g->budget == 0)
            return 0;
        g->budget--;
        return point_valid(g, idx);
    }
    for (int i = start; i <= nfree - left && g->budget != 0; i++) {
        int a = free_ax[i];
        for (int v = 0; v < axis_count(g->op, g->tier, a) && g->budget != 0; v++) {
            if (v == base[a])
                continue;
            idx[a] = v;
            if (near_rec(g, idx, base, free_ax, nfree, i + 1, left - 1))
                return 1;
        }
        idx[a] = base[a];
    }
    return 0;
}

static int near_search(gen *g, int *idx, const int *base, long budget)
{
    int free_ax[TR_MAX_AXES], nfree = 0;
    for (int a = 0; a < g->op->naxes; a++)
        if (idx[a] < 0) {
            free_ax[nfree++] = a;
            idx[a] = base[a];
        }
    g->budget = budget;
    for (int d = 0; d <= nfree && g->budget != 0; d++)
        if (near_rec(g, idx, base, free_ax, nfree, 0, d))
            return 1;
    return 0;
}

/* --quick under a further predicate (a variant's declared domain): P0 = the valid point nearest to the defaults
 * (fewest axes moved); then each axis value v of axis a once: the defaults with a = v when valid, else P0 with
 * a = v, else the valid point nearest to P0 that keeps a = v.  A value without such a point is never usable. */
static int quick_points_pred(gen *g, point_list *l)
{
    const tr_opdef *op = g->op;
    int dflt[TR_MAX_AXES], p0[TR_MAX_AXES];
    for (int b = 0; b < op->naxes; b++) {
        dflt[b] = op->axes[b].dflt;
        p0[b] = -1;
    }
    if (!near_search(g, p0, dflt, GEN_P0_BUDGET))
        return TR_OK;
    for (int a = 0; a < op->naxes; a++)
        for (int v = 0; v < axis_count(op, TR_TIER_QUICK, a); v++) {
            int idx[TR_MAX_AXES];
            memcpy(idx, dflt, sizeof idx);
            idx[a] = v;
            if (!point_valid(g, idx)) {
                memcpy(idx, p0, sizeof idx);
                idx[a] = v;
            }
            if (!point_valid(g, idx)) {
                for (int b = 0; b < op->naxes; b++)
                    idx[b] = b == a ? v : -1;
                if (!near_search(g, idx, p0, GEN_BUDGET))
                    continue;   /* value v of axis a is (as far as the search saw) never usable */
            }
            if (list_add(l, idx) != TR_OK)
                return TR_E_NOMEM;
        }
    return TR_OK;
}

static int quick_points(gen *g, point_list *l) { return g->pred ? quick_points_pred(g, l) : quick_points_op(g, l); }

/* --full: the greedy all-pairs construction of KERNELS.md §5.
 *
 * Pair slots: for axes a < b, slot(a, va, b, vb) = base[a][b] + va·n_b + vb, with a state (0 no valid point contains
 * the pair, 1 live = not yet covered, 2 covered) and a witness (a valid point that contains it).  Completions are
 * searched nearest-to-the-defaults first (near_search) within a budget of point evaluations, so the construction
 * stays polynomial even where a constraint (k <= E, a tuple's grid, …) rules out most of a large product; a pair
 * whose search ran out of budget counts as impossible.  TR_GEN_STATS=1 prints per op how many pairs were proven
 * impossible (searched to the end) and how many were given up, so a too-small budget can never hide silently. */
#define FULL_PAIR_BUDGET 5000
#define FULL_STEP_BUDGET 400

typedef struct pair_table {
    int na;
    int n[TR_MAX_AXES];
    size_t base[TR_MAX_AXES][TR_MAX_AXES];
    size_t nslots;
    unsigned char *state;      /* 0 impossible, 1 live, 2 covered */
    int *witness;              /* na ints per slot */
} pair_table;

static size_t slot_of(const pair_table *t, int a, int va, int b, int vb)
{
    if (a > b) {
        int x = a;
        a = b;
        b = x;
        x = va;
        va = vb;
        vb = x;
    }
    return t->base[a][b] + (size_t)va * (size_t)t->n[b] + (size_t)vb;
}

/* Every pair's feasibility and witness.  *proven / *given_up count the impossible pairs by how the search ended. */
static int pair_table_init(gen *g, pair_table *t, const int *dflt, size_t *proven, size_t *given_up)
{
    const tr_opdef *op = g->op;
    t->na = op->naxes;
    t->nslots = 0;
    for (int a = 0; a < t->na; a++)
        t->n[a] = op->axes[a].nvalues;
    for (int a = 0; a < t->na; a++)
        for (int b = a + 1; b < t->na; b++) {
            t->base[a][b] = t->nslots;
            t->nslots += (size_t)t->n[a] * (size_t)t->n[b];
        }
    t->state = tr_calloc(t->nslots ? t->nslots : 1, 1);
    t->witness = tr_malloc((t->nslots ? t->nslots : 1) * (size_t)t->na * sizeof *t->witness);
    if (!t->state || !t->witness)
        return TR_E_NOMEM;
    const char *env = getenv("TR_GEN_PAIR_BUDGET");   /* a larger budget, to check that no pair was given up */
    long budget = env && atol(env) > 0 ? atol(env) : FULL_PAIR_BUDGET;
    for (int a = 0; a < t->na; a++)
        for (int b = a + 1; b < t->na; b++)
            for (int va = 0; va < t->n[a]; va++)
                for (int vb = 0; vb < t->n[b]; vb++) {
                    size_t s = slot_of(t, a, va, b, vb);
                    int *w = t->witness + s * (size_t)t->na;
                    for (int k = 0; k < t->na; k++)
                        w[k] = -1;
                    w[a] = va;
                    w[b] = vb;
                    if (near_search(g, w, dflt, budget))
                        t->state[s] = 1;
                    else if (g->budget == 0) {
                        (*given_up)++;
                        if (getenv("TR_GEN_STATS") && atoi(getenv("TR_GEN_STATS")) > 1)
                            fprintf(stderr, "  given up: %s=%s %s=%s\n", op->axes[a].name, op->axes[a].values[va],
                                    op->axes[b].name, op->axes[b].values[vb]);
                    }
                    else
                        (*proven)++;
                }
    return TR_OK;
}

/* The value of axis c for the point under construction: the one covering most live pairs with the axes already
 * fixed (ties: the first listed) among those every fixed axis can pair with and that still complete.  -1: none. */
static int best_value(gen *g, const pair_table *t, const int *idx, int c, const int *dflt)
{
    int best = -1;
    size_t best_cover = 0;
    for (int v = 0; v < t->n[c]; v++) {
        size_t cover = 0;
        int possible = 1;
        for (int d = 0; d < t->na && possible; d++) {
            if (d == c || idx[d] < 0)
                continue;
            unsigned char st = t->state[slot_of(t, c, v, d, idx[d])];
            possible = st != 0;
            cover += st == 1;
        }
        if (!possible || (best >= 0 && cover <= best_cover))
            continue;
        int tmp[TR_MAX_AXES];
        memcpy(tmp, idx, sizeof tmp);
        tmp[c] = v;
        if (near_search(g, tmp, dflt, FULL_STEP_BUDGET)) {
            best = v;
            best_cover = cover;
        }
    }
    return best;
}

static int full_points(gen *g, point_list *l)
{
    const tr_opdef *op = g->op;
    int na = op->naxes;
    if (na == 1) {
        for (int v = 0; v < op->axes[0].nvalues; v++) {
            int idx[1] = {v};
            if (point_valid(g, idx) && list_add(l, idx) != TR_OK)
                return TR_E_NOMEM;
        }
        return TR_OK;
    }
    int dflt[TR_MAX_AXES];
    for (int a = 0; a < na; a++)
        dflt[a] = op->axes[a].dflt;
    pair_table t = {0};
    size_t proven = 0, given_up = 0;
    int rc = pair_table_init(g, &t, dflt, &proven, &given_up);
    for (size_t first = 0; rc == TR_OK; first++) {
        while (first < t.nslots && t.state[first] != 1)
            first++;
        if (first == t.nslots)
            break;
        int idx[TR_MAX_AXES];
        memcpy(idx, t.witness + first * (size_t)na, sizeof *idx * (size_t)na);
        int pa = -1, pb = -1;   /* the pair of slot first; the other axes are chosen greedily */
        for (int a = 0; a < na && pb < 0; a++)
            for (int b = a + 1; b < na; b++)
                if (first >= t.base[a][b] && first < t.base[a][b] + (size_t)t.n[a] * (size_t)t.n[b]) {
                    pa = a;
                    pb = b;
                    break;
                }
        for (int a = 0; a < na; a++)
            if (a != pa && a != pb)
                idx[a] = -1;
        for (int c = 0; c < na; c++) {
            if (idx[c] >= 0)
                continue;
            int v = best_value(g, &t, idx, c, dflt);
            if (v < 0) {   /* the budget could not extend this point: take the pair's witness whole */
                memcpy(idx, t.witness + first * (size_t)na, sizeof *idx * (size_t)na);
                break;
            }
            idx[c] = v;
        }
        for (int a = 0; a < na; a++)
            for (int b = a + 1; b < na; b++) {
                size_t s = slot_of(&t, a, idx[a], b, idx[b]);
                if (t.state[s] == 1)
                    t.state[s] = 2;
            }
        rc = list_add(l, idx);
    }
    if (rc == TR_OK && getenv("TR_GEN_STATS"))
        fprintf(stderr, "full tier %s: %zu pair slots, %zu impossible (proven), %zu given up (budget), %zu points\n",
                op->name, t.nslots, proven, given_up, l->n);
    tr_dealloc(t.state);
    tr_dealloc(t.witness);
    return rc;
}

static int cmp_points(const void *x, const void *y, void *ctx)
{
    const tr_opdef *op = ctx;
    const int *a = x, *b = y;
    for (int k = 0; k < op->naxes; k++)
        if (a[k] != b[k])
            return a[k] < b[k] ? -1 : 1;
    return 0;
}

int tr_point_iter_init_pred(tr_point_iter *it, const tr_opdef *op, tr_tier tier, tr_point_pred pred, void *ctx,
                            tr_error *err)
{
    memset(it, 0, sizeof *it);
    it->op = op;
    it->tier = tier;
    it->pred = pred;
    it->ctx = ctx;
    if (tier == TR_TIER_EXHAUSTIVE) {
        it->odo_done = op->naxes == 0;
        return TR_OK;
    }
    point_list l = {NULL, 0, 0, op->naxes};
    gen g = {op, tier, pred, ctx, -1};
    int rc = tier == TR_TIER_QUICK ? quick_points(&g, &l) : full_points(&g, &l);
    if (rc != TR_OK) {
        tr_dealloc(l.v);
        return tr_fail(err, rc, op->name, "cannot enumerate the %s tier", tr_tier_name(tier));
    }
    if (l.n > 1)
        qsort_r(l.v, l.n, (size_t)op->naxes * sizeof *l.v, cmp_points, (void *)op);
    it->list = l.v;
    it->nlist = l.n;
    return TR_OK;
}

int tr_point_iter_init(tr_point_iter *it, const tr_opdef *op, tr_tier tier, tr_error *err)
{
    return tr_point_iter_init_pred(it, op, tier, NULL, NULL, err);
}

/* Is text one of the tier-part points?  (Always points that repeat one are dropped, KERNELS.md §5.) */
static int tier_has(const tr_point_iter *it, const char *text)
{
    char buf[TR_CASE_ID_MAX];
    if (it->tier != TR_TIER_EXHAUSTIVE) {
        for (size_t i = 0; i < it->nlist; i++) {
            point_text(it->op, it->list + i * it->op->naxes, buf, sizeof buf);
            if (strcmp(buf, text) == 0)
                return 1;
        }
        return 0;
    }
    /* exhaustive: text is in the product when it splits into one value label per axis, in order, and is valid */
    const char *p = text;
    for (int a = 0; a < it->op->naxes; a++) {
        int found = 0;
        for (int v = 0; v < it->op->axes[a].nvalues && !found; v++) {
            const char *lab = it->op->axes[a].values[v];
            size_t n = strlen(lab);
            if (strncmp(p, lab, n) == 0 && (p[n] == ';' || (p[n] == '\0' && a == it->op->naxes - 1))) {
                found = 1;
                p += n + (p[n] == ';');
            }
        }
        if (!found)
            return 0;
    }
    tr_params prm;
    return *p == '\0' && tr_params_parse(&prm, text) == 0 && (!it->op->valid || it->op->valid(&prm));
}

static int next_always(tr_point_iter *it, char *buf, size_t cap)
{
    const char *const *list = it->op->always;
    int n = it->op->nalways;
    if (it->tier == TR_TIER_QUICK && it->op->quick_always) {
        list = it->op->quick_always;
        n = it->op->nquick_always;
    }
    if (it->always) {
        list = it->always;
        n = it->nalways;
    }
    while (it->always_pos < n) {
        const char *t = list[it->always_pos++];
        int dup = tier_has(it, t);
        for (int k = 0; !dup && k < it->always_pos - 1; k++)
            dup = strcmp(list[k], t) == 0;
        if (!dup) {
            snprintf(buf, cap, "%s", t);
            return 1;
        }
    }
    return 0;
}

void tr_point_iter_use_always(tr_point_iter *it, const char *const *list, int n)
{
    it->always = list;
    it->nalways = n;
}

int tr_point_iter_next(tr_point_iter *it, char *buf, size_t cap)
{
    const tr_opdef *op = it->op;
    if (it->tier != TR_TIER_EXHAUSTIVE) {
        if (it->pos < it->nlist) {
            point_text(op, it->list + it->pos * op->naxes, buf, cap);
            it->pos++;
            return 1;
        }
        return next_always(it, buf, cap);
    }
    gen g = {op, it->tier, it->pred, it->ctx, -1};
    while (!it->odo_done) {
        int valid = point_valid(&g, it->odo);
        if (valid)
            point_text(op, it->odo, buf, cap);
        int a = op->naxes - 1;   /* advance the odometer, last axis fastest */
        while (a >= 0 && ++it->odo[a] == op->axes[a].nvalues) {
            it->odo[a] = 0;
            a--;
        }
        if (a < 0)
            it->odo_done = 1;
        if (valid)
            return 1;
    }
    return next_always(it, buf, cap);
}

void tr_point_iter_free(tr_point_iter *it)
{
    tr_dealloc(it->list);
    it->list = NULL;
}
