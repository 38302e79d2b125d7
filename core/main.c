#include "gw.h"
int main(void) { gw_log(GW_LOG_INFO, "placeholder"); return 0; }
