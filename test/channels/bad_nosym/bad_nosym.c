/* bad_nosym — exports no gw_channel_entry() */
#define BAD_NO_ENTRY 1
#include "../bad_common.h"
