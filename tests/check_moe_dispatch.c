/* check_moe_dispatch.c — placeholder, replaced by the module's tests. */
#include "tests.h"
Suite *suite_moe_dispatch(void) { return suite_create("moe_dispatch"); }
