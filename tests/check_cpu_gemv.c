/* check_cpu_gemv.c — placeholder, replaced by the module's tests. */
#include "tests.h"
Suite *suite_cpu_gemv(void) { return suite_create("cpu_gemv"); }
