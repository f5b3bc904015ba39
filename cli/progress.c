/*
 * progress.c — the stderr progress bar (see progress.h).
 */
#include "progress.h"
#include "cli.h"

#include <stdio.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

void progress_init(progress *p, const char *label, int wanted)
{
    p->label = label;
    p->enabled = wanted && cli_err == stderr && isatty(fileno(stderr));
    p->started_ms = p->last_ms = now_ms();
    p->drawn = 0;
}

void progress_update(progress *p, uint64_t done, uint64_t total)
{
    if (!p->enabled || !total)
        return;
    double t = now_ms();
    if (done < total && t - p->last_ms < 100.0)
        return;
    p->last_ms = t;
    const int width = 30;
    int fill = (int)((double)done / (double)total * width);
    double elapsed = (t - p->started_ms) / 1e3, left = done ? elapsed * (double)(total - done) / (double)done : 0;
    char bar[64];
    for (int i = 0; i < width; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[width] = 0;
    fprintf(stderr, "\r%s [%s] %llu/%llu  %.0fs elapsed, ~%.0fs left ", p->label, bar, (unsigned long long)done,
            (unsigned long long)total, elapsed, left);
    fflush(stderr);
    p->drawn = 1;
}

void progress_done(progress *p)
{
    if (p->enabled && p->drawn) {
        fprintf(stderr, "\r\033[K");
        fflush(stderr);
    }
    p->drawn = 0;
}
