/* bad_init — init fails with a reason */
#define BAD_INIT_FAILS 1
#include "../bad_common.h"
