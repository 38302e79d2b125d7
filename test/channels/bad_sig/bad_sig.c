/* bad_sig — a build signature from another layout */
#define BAD_BUILD_SIG "gw1:ilp32:le"
#include "../bad_common.h"
