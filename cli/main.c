/*
 * main.c — the `trellis` binary: everything happens in trellis_main (cli.c) so tests can run commands in-process.
 */
#include "cli.h"

int main(int argc, char **argv) { return trellis_main(argc, argv); }
