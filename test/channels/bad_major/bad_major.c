/* bad_major — built for ABI 2.0: rejected with "ABI major 2 instead of 1" */
#define BAD_ABI_VERSION ((2u << 16) | 0u)
#include "../bad_common.h"
