/* cmd_symbols.c — placeholder for `trellis symbols` (MOE.md §5.5). */
#include "cli.h"
int cmd_symbols(int argc, char **argv) { (void)argc; (void)argv; return cli_usage("symbols", "not built yet"); }
