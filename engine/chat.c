/*
 * chat.c — the chat templates of ENGINE.md §4 rendered in C (GLM-4.7 and ChatML/Qwen3, checked against the Jinja
 * originals' golden renderings), the stop-token set of §4 "Stop tokens", and the --messages file reader.
 */
#include "trellis/chat.h"

#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/jsonio.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- a string builder ---------------------------------------------------------------------------------------- */

typedef struct sb {
    char *p;
    size_t n, cap;
    int oom;
} sb;

static void sb_add(sb *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = tr_realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_str(sb *b, const char *s) { sb_add(b, s, strlen(s)); }

/* ---- spans and Python's str methods -------------------------------------------------------------------------- */

typedef struct span {
    const char *p;
    size_t n;
} span;

static void sb_span(sb *b, span s) { sb_add(b, s.p, s.n); }

static span whole(const char *s) { return (span){s, strlen(s)}; }

/* Python str.isspace() of one character: bidi class WS, B or S, or category Zs. */
static int py_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Decode the UTF-8 character starting at p (at most n bytes); *len its length (1 for a stray byte, then 0xFFFD). */
static uint32_t decode_at(const uint8_t *p, size_t n, size_t *len)
{
    size_t l = p[0] < 0x80 ? 1 : p[0] >= 0xF0 ? 4 : p[0] >= 0xE0 ? 3 : p[0] >= 0xC0 ? 2 : 0;
    if (!l || l > n) {
        *len = 1;
        return 0xFFFD;
    }
    static const uint8_t mask[5] = {0, 0x7F, 0x1F, 0x0F, 0x07};
    uint32_t c = p[0] & mask[l];
    for (size_t i = 1; i < l; i++)
        c = (c << 6) | (p[i] & 0x3Fu);
    *len = l;
    return c;
}

/* The start of the last character of s (s.n > 0). */
static size_t last_char(span s)
{
    size_t j = s.n - 1;
    while (j > 0 && ((uint8_t)s.p[j] & 0xC0) == 0x80 && s.n - 1 - j < 3)
        j--;
    return j;
}

/* strip(): remove leading and trailing characters with str.isspace(). */
static span py_strip(span s)
{
    size_t len;
    while (s.n && py_space(decode_at((const uint8_t *)s.p, s.n, &len)))
        s.p += len, s.n -= len;
    while (s.n) {
        size_t j = last_char(s);
        if (!py_space(decode_at((const uint8_t *)s.p + j, s.n - j, &len)) || len != s.n - j)
            break;
        s.n = j;
    }
    return s;
}

static span lstrip_nl(span s)
{
    while (s.n && s.p[0] == '\n')
        s.p++, s.n--;
    return s;
}

static span rstrip_nl(span s)
{
    while (s.n && s.p[s.n - 1] == '\n')
        s.n--;
    return s;
}

/* Offsets of the first / last occurrence of needle in s, or -1. */
static long find_first(span s, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= s.n; i++)
        if (memcmp(s.p + i, needle, k) == 0)
            return (long)i;
    return -1;
}

static long find_last(span s, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = s.n >= k ? s.n - k + 1 : 0; i-- > 0;)
        if (memcmp(s.p + i, needle, k) == 0)
            return (long)i;
    return -1;
}

/* ENGINE.md §4 reasoning split: reasoning_content if given; else, when the content holds </think>, reasoning = the
 * part before the first </think>, rstrip('\n'), then its part after the last <think>, lstrip('\n'); content = the
 * part after the last </think>, lstrip('\n').  Otherwise reasoning is empty. */
static void split_reasoning(const tr_chat_msg *m, span *reasoning, span *content)
{
    *content = whole(m->content);
    *reasoning = (span){"", 0};
    if (m->reasoning_content) {
        *reasoning = whole(m->reasoning_content);
        return;
    }
    long first = find_first(*content, "</think>");
    if (first < 0)
        return;
    span r = rstrip_nl((span){content->p, (size_t)first});
    long open = find_last(r, "<think>");
    if (open >= 0)
        r = (span){r.p + open + 7, r.n - (size_t)open - 7};
    *reasoning = lstrip_nl(r);
    long last = find_last(*content, "</think>");
    *content = lstrip_nl((span){content->p + last + 8, content->n - (size_t)last - 8});
}

static int is_role(const tr_chat_msg *m, const char *role) { return strcmp(m->role, role) == 0; }

/* ---- GLM-4.7 ------------------------------------------------------------------------------------------------- */

static void glm_assistant(sb *b, const tr_chat_msg *m, int after_last_user)
{
    span reasoning, content;
    split_reasoning(m, &reasoning, &content);
    sb_str(b, "<|assistant|>");
    if (after_last_user && reasoning.n) {
        sb_str(b, "<think>");
        sb_span(b, py_strip(reasoning));
        sb_str(b, "</think>");
    } else
        sb_str(b, "</think>");
    sb_span(b, py_strip(content));
}

static void render_glm(sb *b, const tr_chat_msg *msgs, size_t n, int gen, int thinking)
{
    long last_user = -1;
    for (size_t i = 0; i < n; i++)
        if (is_role(&msgs[i], "user"))
            last_user = (long)i;
    sb_str(b, "[gMASK]<sop>");
    for (size_t i = 0; i < n; i++) {
        const tr_chat_msg *m = &msgs[i];
        if (is_role(m, "system") || is_role(m, "user")) {
            sb_str(b, is_role(m, "system") ? "<|system|>" : "<|user|>");
            sb_str(b, m->content);
        } else if (is_role(m, "assistant"))
            glm_assistant(b, m, (long)i > last_user);
        else {
            if (i == 0 || !is_role(&msgs[i - 1], "tool"))
                sb_str(b, "<|observation|>");
            sb_str(b, "<tool_response>");
            sb_str(b, m->content);
            sb_str(b, "</tool_response>");
        }
    }
    if (gen)
        sb_str(b, thinking ? "<|assistant|><think>" : "<|assistant|></think>");
}

/* ---- ChatML / Qwen3 ------------------------------------------------------------------------------------------ */

/* The last user message not wrapped in <tool_response>…</tool_response>; none → the last index. */
static long last_query(const tr_chat_msg *msgs, size_t n)
{
    static const char open[] = "<tool_response>", close[] = "</tool_response>";
    for (size_t i = n; i-- > 0;) {
        if (!is_role(&msgs[i], "user"))
            continue;
        span c = whole(msgs[i].content);
        int wrapped = c.n >= sizeof open - 1 && c.n >= sizeof close - 1 && !memcmp(c.p, open, sizeof open - 1) &&
                      !memcmp(c.p + c.n - (sizeof close - 1), close, sizeof close - 1);
        if (!wrapped)
            return (long)i;
    }
    return (long)n - 1;
}

static void chatml_assistant(sb *b, span reasoning, span content, int think_block)
{
    if (think_block) {
        sb_str(b, "<|im_start|>assistant\n<think>\n");
        sb_span(b, lstrip_nl(rstrip_nl(reasoning)));
        sb_str(b, "\n</think>\n\n");
        sb_span(b, lstrip_nl(content));
    } else {
        sb_str(b, "<|im_start|>assistant\n");
        sb_span(b, content);
    }
    sb_str(b, "<|im_end|>\n");
}

static void chatml_tool(sb *b, const tr_chat_msg *msgs, size_t n, size_t i)
{
    if (i == 0 || !is_role(&msgs[i - 1], "tool"))
        sb_str(b, "<|im_start|>user");
    sb_str(b, "\n<tool_response>\n");
    sb_str(b, msgs[i].content);
    sb_str(b, "\n</tool_response>");
    if (i + 1 == n || !is_role(&msgs[i + 1], "tool"))
        sb_str(b, "<|im_end|>\n");
}

static void chatml_block(sb *b, const char *role, const char *content)
{
    sb_str(b, "<|im_start|>");
    sb_str(b, role);
    sb_str(b, "\n");
    sb_str(b, content);
    sb_str(b, "<|im_end|>\n");
}

/* A system message at index 0 opens the prompt; user messages and later system messages are plain blocks; an
 * assistant message after last_query gets the think block when it is the last message or has reasoning. */
static void render_chatml(sb *b, const tr_chat_msg *msgs, size_t n, int gen, int thinking)
{
    long lq = last_query(msgs, n);
    for (size_t i = 0; i < n; i++) {
        const tr_chat_msg *m = &msgs[i];
        if (is_role(m, "user") || is_role(m, "system"))
            chatml_block(b, m->role, m->content);
        else if (is_role(m, "assistant")) {
            span reasoning, content;
            split_reasoning(m, &reasoning, &content);
            chatml_assistant(b, reasoning, content, (long)i > lq && (i + 1 == n || reasoning.n));
        } else
            chatml_tool(b, msgs, n, i);
    }
    if (gen)
        sb_str(b, thinking ? "<|im_start|>assistant\n" : "<|im_start|>assistant\n<think>\n\n</think>\n\n");
}

/* ---- entry points -------------------------------------------------------------------------------------------- */

int tr_chat_style_for(const char *model_type)
{
    if (model_type && strcmp(model_type, "glm4_moe_lite") == 0)
        return TR_CHAT_GLM47;
    if (model_type && strcmp(model_type, "qwen3_moe") == 0)
        return TR_CHAT_CHATML;
    return -1;
}

static int check_messages(const tr_chat_msg *msgs, size_t n, tr_error *err)
{
    static const char *const roles[] = {"system", "user", "assistant", "tool"};
    for (size_t i = 0; i < n; i++) {
        char where[64];
        int ok = 0;
        for (size_t r = 0; r < 4 && msgs[i].role; r++)
            ok |= strcmp(msgs[i].role, roles[r]) == 0;
        snprintf(where, sizeof where, "messages[%zu].role", i);
        if (!ok)
            return tr_fail(err, TR_E_INPUT, where, "\"%.100s\" is not one of system, user, assistant, tool",
                           msgs[i].role ? msgs[i].role : "(null)");
        snprintf(where, sizeof where, "messages[%zu].content", i);
        if (!msgs[i].content)
            return tr_fail(err, TR_E_INPUT, where, "missing");
    }
    return TR_OK;
}

int tr_chat_render(tr_chat_style style, const tr_chat_msg *msgs, size_t n, int add_generation_prompt, int thinking,
                   char **out, size_t *len, tr_error *err)
{
    *out = NULL;
    *len = 0;
    if (style != TR_CHAT_GLM47 && style != TR_CHAT_CHATML)
        return tr_fail(err, TR_E_UNSUPPORTED, "chat template", "unknown style %d", (int)style);
    int rc = check_messages(msgs, n, err);
    if (rc != TR_OK)
        return rc;
    sb b = {0};
    sb_add(&b, "", 0);
    if (style == TR_CHAT_GLM47)
        render_glm(&b, msgs, n, add_generation_prompt, thinking);
    else
        render_chatml(&b, msgs, n, add_generation_prompt, thinking);
    if (b.oom) {
        tr_dealloc(b.p);
        return tr_fail(err, TR_E_NOMEM, "chat template", "cannot allocate the rendered prompt");
    }
    *out = b.p;
    *len = b.n;
    return TR_OK;
}

/* ---- stop tokens (ENGINE.md §4 "Stop tokens") ---------------------------------------------------------------- */

static int cmp_id(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

int tr_chat_stop_ids(tr_chat_style style, const tr_tokenizer *t, int template_used, const int32_t *eos, size_t n_eos,
                     const int32_t *extra, size_t n_extra, int32_t **ids, size_t *n, tr_error *err)
{
    static const char *const glm[] = {"<|endoftext|>", "<|user|>", "<|observation|>", "<|system|>"};
    static const char *const chatml[] = {"<|im_end|>", "<|endoftext|>"};
    const char *const *names = style == TR_CHAT_GLM47 ? glm : chatml;
    size_t n_names = style == TR_CHAT_GLM47 ? (template_used ? 4 : 3) : 2;
    *n = 0;
    *ids = tr_malloc((n_eos + n_names + n_extra + 1) * sizeof **ids);
    if (!*ids)
        return tr_fail(err, TR_E_NOMEM, "stop tokens", "cannot allocate the stop set");
    int32_t *v = *ids;
    size_t k = 0;
    for (size_t i = 0; i < n_eos; i++)
        v[k++] = eos[i];
    for (size_t i = 0; t && i < n_names; i++) {
        int32_t id = tr_tokenizer_token_id(t, names[i]);
        if (id >= 0)
            v[k++] = id;
    }
    for (size_t i = 0; i < n_extra; i++)
        v[k++] = extra[i];
    qsort(v, k, sizeof *v, cmp_id);
    size_t u = 0;
    for (size_t i = 0; i < k; i++)
        if (u == 0 || v[u - 1] != v[i])
            v[u++] = v[i];
    *n = u;
    return TR_OK;
}

/* ---- --messages FILE.json ------------------------------------------------------------------------------------ */

/* Check message i and add the bytes its strings need to *bytes. */
static int message_check(const char *path, const json_t *m, size_t i, size_t *bytes, tr_error *err)
{
    if (!json_is_object(m))
        return tr_fail(err, TR_E_INPUT, path, "messages[%zu]: not an object", i);
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)m, key, v) {
        int known = !strcmp(key, "role") || !strcmp(key, "content") || !strcmp(key, "reasoning_content");
        if (!strcmp(key, "tool_calls") || !strcmp(key, "tools"))
            return tr_fail(err, TR_E_UNSUPPORTED, path, "messages[%zu].%s: tool declarations and tool calls are not "
                           "supported", i, key);
        if (!known)
            return tr_fail(err, TR_E_INPUT, path, "messages[%zu].%.100s: unknown field (expected role, content, "
                           "reasoning_content)", i, key);
        if (!json_is_string(v) && !(json_is_null(v) && !strcmp(key, "reasoning_content")))
            return tr_fail(err, TR_E_INPUT, path, "messages[%zu].%s: not a string", i, key);
        if (json_is_string(v) && strlen(json_string_value(v)) != json_string_length(v))
            return tr_fail(err, TR_E_INPUT, path, "messages[%zu].%s: NUL characters are not supported", i, key);
        *bytes += json_is_string(v) ? json_string_length(v) + 1 : 0;
    }
    if (!json_object_get(m, "role"))
        return tr_fail(err, TR_E_INPUT, path, "messages[%zu].role: required field missing", i);
    if (!json_object_get(m, "content"))
        return tr_fail(err, TR_E_INPUT, path, "messages[%zu].content: required field missing", i);
    return TR_OK;
}

static const char *copy_str(char **dst, const json_t *v)
{
    if (!json_is_string(v))
        return NULL;
    char *s = *dst;
    memcpy(s, json_string_value(v), json_string_length(v) + 1);
    *dst += json_string_length(v) + 1;
    return s;
}

static int messages_copy(const json_t *arr, tr_chat_msg **msgs, char **storage, size_t bytes)
{
    size_t n = json_array_size(arr);
    char *block = tr_malloc(n * sizeof(tr_chat_msg) + bytes);
    if (!block)
        return TR_E_NOMEM;
    tr_chat_msg *m = (tr_chat_msg *)block;
    char *s = block + n * sizeof(tr_chat_msg);
    for (size_t i = 0; i < n; i++) {
        const json_t *o = json_array_get(arr, i);
        m[i].role = copy_str(&s, json_object_get(o, "role"));
        m[i].content = copy_str(&s, json_object_get(o, "content"));
        m[i].reasoning_content = copy_str(&s, json_object_get(o, "reasoning_content"));
    }
    *msgs = m;
    *storage = block;
    return TR_OK;
}

static int messages_parse(const char *path, const json_t *arr, tr_chat_msg **msgs, size_t *n, char **storage,
                          tr_error *err)
{
    if (!json_is_array(arr))
        return tr_fail(err, TR_E_INPUT, path, "top level is not a JSON array of messages");
    if (!json_array_size(arr))
        return tr_fail(err, TR_E_INPUT, path, "no messages");
    size_t bytes = 0;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        int rc = message_check(path, json_array_get(arr, i), i, &bytes, err);
        if (rc != TR_OK)
            return rc;
    }
    if (messages_copy(arr, msgs, storage, bytes) != TR_OK)
        return tr_fail(err, TR_E_NOMEM, path, "cannot store %zu messages", json_array_size(arr));
    *n = json_array_size(arr);
    return TR_OK;
}

int tr_chat_messages_load(const char *path, tr_chat_msg **msgs, size_t *n, char **storage_to_free, tr_error *err)
{
    *msgs = NULL;
    *n = 0;
    *storage_to_free = NULL;
    if (!tr_path_is_file(path))
        return tr_fail(err, TR_E_IO, path, tr_path_exists(path) ? "not a regular file" : "not found");
    char *text;
    size_t size;
    int rc = tr_file_read_all(path, &text, &size, err);
    if (rc != TR_OK)
        return rc;
    json_error_t jerr;
    json_t *root = tr_json_parse(text, size, TR_E_INPUT, 0, &jerr, &rc);
    tr_dealloc(text);
    if (rc == TR_E_NOMEM)
        return tr_fail(err, rc, path, "out of memory parsing JSON");
    if (!root)
        return tr_fail(err, rc, path, "line %d, column %d: %s", jerr.line, jerr.column, jerr.text);
    rc = messages_parse(path, root, msgs, n, storage_to_free, err);
    json_decref(root);
    return rc;
}
