/*
 * progress.h — a one-line progress bar on stderr for long commands (perplexity, kld, bench, quantize), drawn only
 * when stderr is a terminal and --no-progress was not given; redrawn at most ten times a second.
 */
#ifndef TRELLIS_CLI_PROGRESS_H
#define TRELLIS_CLI_PROGRESS_H

#include <stdint.h>

typedef struct progress {
    const char *label;
    int enabled;
    double started_ms, last_ms;
    int drawn;
} progress;

void progress_init(progress *p, const char *label, int wanted);
/* done of total units; the bar shows the fraction, the elapsed time and an estimate of the time left. */
void progress_update(progress *p, uint64_t done, uint64_t total);
/* Clear the line (leaves the terminal as it was). */
void progress_done(progress *p);

#endif
