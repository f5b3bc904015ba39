/*
 * run_tests.c — runs every libcheck suite of TR_SUITES and prints libcheck's summary line last.
 *
 * Usage: run_tests [SUITE...]   (no argument: all suites).  CK_FORK=no is honoured (valgrind runs use it).
 */
#include "tests.h"

#include <stdlib.h>
#include <string.h>

typedef struct named_suite {
    const char *name;
    Suite *(*make)(void);
} named_suite;

static const named_suite suites[] = {
#define TR_SUITE_ROW_(name) {#name, suite_##name},
    TR_SUITES(TR_SUITE_ROW_)
#undef TR_SUITE_ROW_
};

static int wanted(const char *name, int argc, char **argv)
{
    if (argc < 2)
        return 1;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    SRunner *sr = NULL;
    for (size_t i = 0; i < sizeof suites / sizeof suites[0]; i++) {
        if (!wanted(suites[i].name, argc, argv))
            continue;
        if (!sr)
            sr = srunner_create(suites[i].make());
        else
            srunner_add_suite(sr, suites[i].make());
    }
    if (!sr)
        return 2;
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
