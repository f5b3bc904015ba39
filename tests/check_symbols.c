/* check_symbols.c — placeholder, replaced by the module's tests. */
#include "tests.h"
Suite *suite_symbols(void) { return suite_create("symbols"); }
