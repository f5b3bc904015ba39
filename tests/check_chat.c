/*
 * check_chat.c — `trellis chat` in a real terminal: the built binary runs on a pseudo-terminal (forkpty), the test
 * types two user turns, a /think command and /exit, and checks the prompts, the streamed replies, the cache reuse
 * of the second turn (-v) and the exit status.  Also --messages / --render-only against the golden renderings of
 * ENGINE.md §4.
 */
#include "cli_run.h"
#include "tests.h"

#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define GLM "golden/oracle/glm4_moe_lite_f32"
#define QWEN "golden/oracle/qwen3_moe_f32"

typedef struct term {
    int fd;
    pid_t pid;
    char buf[65536];
    size_t len;
} term;

/* Read from the terminal until `want` appears after offset `from` (or 60 s pass); returns its offset or -1. */
static long wait_for(term *t, size_t from, const char *want)
{
    for (int waited = 0; waited < 600;) {
        t->buf[t->len] = 0;
        const char *hit = strstr(t->buf + from, want);
        if (hit)
            return hit - t->buf;
        struct pollfd p = {t->fd, POLLIN, 0};
        int r = poll(&p, 1, 100);
        if (r == 0) {
            waited++;
            continue;
        }
        if (r < 0 || t->len + 1 >= sizeof t->buf)
            return -1;
        ssize_t k = read(t->fd, t->buf + t->len, sizeof t->buf - 1 - t->len);
        if (k <= 0)
            return -1;
        t->len += (size_t)k;
    }
    return -1;
}

static void type(term *t, const char *s)
{
    ck_assert_int_eq(write(t->fd, s, strlen(s)), (ssize_t)strlen(s));
}

START_TEST(test_chat_in_a_terminal)
{
    term t = {0};
    t.pid = forkpty(&t.fd, NULL, NULL, NULL);
    ck_assert_int_ge(t.pid, 0);
    if (t.pid == 0) {
        execl("build/trellis", "trellis", "chat", "-m", GLM, "--greedy", "-n", "6", "--backend", "ref", "-v",
              (char *)NULL);
        _exit(127);
    }
    long at = wait_for(&t, 0, "> ");
    ck_assert_msg(at >= 0, "no prompt: %s", t.buf);
    type(&t, "hello there\r");
    long second = wait_for(&t, (size_t)at + 2, "\n> ");
    ck_assert_msg(second >= 0, "no second prompt after the first reply: %s", t.buf);
    ck_assert_ptr_nonnull(strstr(t.buf, "hello there"));   /* the terminal echoed the typed line */
    ck_assert_ptr_nonnull(strstr(t.buf, "0 reused from the cache"));
    type(&t, "/think off\r");
    long think = wait_for(&t, (size_t)second + 3, "(thinking off)");
    ck_assert_msg(think >= 0, "no /think answer: %s", t.buf + second);
    type(&t, "and a second question\r");
    long third = wait_for(&t, (size_t)think, "reused from the cache");
    ck_assert_msg(third >= 0, "second turn missing: %s", t.buf + think);
    /* the second turn keeps the common prefix: a non-zero count of reused tokens */
    long line = third;
    while (line > 0 && t.buf[line - 1] != ' ')
        line--;
    while (line > 0 && t.buf[line - 1] == ' ')
        line--;
    while (line > 0 && t.buf[line - 1] >= '0' && t.buf[line - 1] <= '9')
        line--;
    ck_assert_msg(atoi(t.buf + line) > 0, "the second turn reused nothing: %s", t.buf + think);
    long fourth = wait_for(&t, (size_t)third, "\n> ");
    ck_assert_msg(fourth >= 0, "no prompt after the second reply: %s", t.buf + third);
    type(&t, "/exit\r");
    int status = -1;
    pid_t done = 0;
    for (int i = 0; i < 600 && (done = waitpid(t.pid, &status, WNOHANG)) == 0; i++) {
        char drain[4096];
        struct pollfd p = {t.fd, POLLIN, 0};
        if (poll(&p, 1, 100) > 0 && read(t.fd, drain, sizeof drain) <= 0)
            break;   /* the terminal closed: the child is exiting */
    }
    if (done == 0) {
        for (int i = 0; i < 100 && (done = waitpid(t.pid, &status, WNOHANG)) == 0; i++)
            usleep(100000);
        if (done == 0) {
            kill(t.pid, SIGKILL);
            waitpid(t.pid, &status, 0);
        }
    }
    close(t.fd);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "chat did not exit cleanly (%d): %s", status, t.buf);
}
END_TEST

static const char *write_messages(const char *name, const char *json)
{
    return tr_test_write(tr_test_tmpdir(), name, json, strlen(json));
}

/* --render-only prints ENGINE.md §4's golden renderings and the ids. */
START_TEST(test_render_only)
{
    const char *m1 = write_messages("m1.json", "[{\"role\":\"system\",\"content\":\"S\"},{\"role\":\"user\",\"content\":\"hi\"}]");
    cli_result r = cli_run("chat", "-m", GLM, "--messages", m1, "--render-only", NULL);
    ck_assert_msg(r.status == 0, "%.3000s", r.err);
    const char *glm = "[gMASK]<sop><|system|>S<|user|>hi<|assistant|><think>\n";
    ck_assert_msg(!strncmp(r.out, glm, strlen(glm)), "%.3000s", r.out);
    cli_result_free(&r);
    r = cli_run("chat", "-m", QWEN, "--messages", m1, "--render-only", NULL);
    ck_assert_msg(r.status == 0, "%.3000s", r.err);
    const char *want = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n\n";
    ck_assert_msg(!strncmp(r.out, want, strlen(want)), "%.3000s", r.out);
    cli_result_free(&r);
    r = cli_run("chat", "-m", QWEN, "--messages", m1, "--render-only", "--no-think", NULL);
    ck_assert_ptr_nonnull(strstr(r.out, "<|im_start|>assistant\n<think>\n\n</think>\n\n"));
    cli_result_free(&r);
}
END_TEST

/* --messages prints one reply; a conversation longer than the context is refused with exit 2. */
START_TEST(test_messages_reply)
{
    const char *m1 = write_messages("m2.json", "[{\"role\":\"user\",\"content\":\"hi\"}]");
    cli_result r = cli_run("chat", "-m", QWEN, "--messages", m1, "--greedy", "-n", "5", NULL);
    ck_assert_msg(r.status == 0, "%.3000s", r.err);
    ck_assert_uint_gt(strlen(r.out), 1);
    cli_result_free(&r);
    r = cli_run("chat", "-m", QWEN, "--messages", m1, "--greedy", "--ctx-size", "4", NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert_ptr_nonnull(strstr(r.err, "--ctx-size is 4"));
    cli_result_free(&r);
    const char *bad = write_messages("m3.json", "[{\"role\":\"wizard\",\"content\":\"hi\"}]");
    r = cli_run("chat", "-m", QWEN, "--messages", bad, NULL);
    ck_assert_int_eq(r.status, 2);
    ck_assert_ptr_nonnull(strstr(r.err, "messages[0].role"));
    cli_result_free(&r);
}
END_TEST

Suite *suite_chat(void)
{
    Suite *s = suite_create("chat");
    TCase *t = tcase_create("chat");
    tcase_set_timeout(t, 300);
    tcase_add_test(t, test_chat_in_a_terminal);
    tcase_add_test(t, test_render_only);
    tcase_add_test(t, test_messages_reply);
    suite_add_tcase(s, t);
    return s;
}
