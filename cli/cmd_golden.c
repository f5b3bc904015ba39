#include "cli.h"
int cmd_golden(int argc, char **argv) { (void)argc; (void)argv; return 0; }
