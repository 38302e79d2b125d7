/* bad_size — struct_size shorter than the ABI 1.0 vtable */
#define BAD_STRUCT_SIZE offsetof(gw_channel_t, notify_verify)
#include "../bad_common.h"
