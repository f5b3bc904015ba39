/* cmd_bench_kernels.c — placeholder for `trellis bench-kernels`. */
#include "cli.h"
int cmd_bench_kernels(int argc, char **argv) { (void)argc; (void)argv; return cli_usage("bench-kernels", "not built yet"); }
