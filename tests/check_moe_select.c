/* check_moe_select.c — placeholder, replaced by the module's tests. */
#include "tests.h"
Suite *suite_moe_select(void) { return suite_create("moe_select"); }
