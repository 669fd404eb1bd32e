// C ABI of the kernel library. Every exported function validates its arguments here.
#pragma once
#include <stdint.h>

#define MOE_API extern "C" __attribute__((visibility("default")))

// ISA levels, in increasing order of capability.
enum moe_isa { MOE_ISA_SCALAR = 0, MOE_ISA_AVX2 = 1, MOE_ISA_AVX512 = 2 };

MOE_API int moe_isa_detected(void);          // best level this CPU and OS support
MOE_API int moe_isa_active(void);            // level in use (detected, or forced lower)
MOE_API int moe_isa_force(int isa);          // 0 on success, -1 if the CPU cannot run it
MOE_API const char *moe_isa_name(int isa);
