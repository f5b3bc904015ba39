/*
 * coverage.h — coverage builds only (`make coverage` compiles with --coverage -DTR_COVERAGE): a process that ends
 * with _exit (the forked conformance case children) never runs gcov's exit handler, so what it executed would be
 * missing from the report.  tr_coverage_flush() writes the counters out first; it is a no-op in every other build.
 */
#ifndef TRELLIS_COVERAGE_H
#define TRELLIS_COVERAGE_H

#ifdef TR_COVERAGE
void __gcov_dump(void);   /* libgcov (GCC >= 11) */
static inline void tr_coverage_flush(void) { __gcov_dump(); }
#else
static inline void tr_coverage_flush(void) {}
#endif

#endif
