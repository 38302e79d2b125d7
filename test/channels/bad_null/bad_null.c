/* bad_null — a NULL mandatory method (pay_parse) */
#define BAD_PAY_PARSE NULL
#include "../bad_common.h"
