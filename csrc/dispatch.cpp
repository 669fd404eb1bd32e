// Runtime ISA selection: cpuid feature bits plus XGETBV (the OS must save the wide registers),
// and for AMX the Linux permission to use tile data.
#include "api.h"
#include <cpuid.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace {

bool os_saves(uint64_t mask) {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  uint64_t xcr0 = (uint64_t(hi) << 32) | lo;
  return (xcr0 & mask) == mask;
}

// Linux enables the 8 KB of tile data per process only on request (ARCH_REQ_XCOMP_PERM for
// XFEATURE_XTILEDATA, kernel 5.16+); without it the first tile instruction faults. The request
// is idempotent, so asking at every detection costs one syscall and keeps no state here.
bool os_permits_tiles() {
#if defined(__linux__) && defined(SYS_arch_prctl)
  constexpr int kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

int detect() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return MOE_ISA_SCALAR;
  const bool osxsave = c & bit_OSXSAVE, fma = c & bit_FMA, f16c = c & bit_F16C;
  if (!osxsave || !os_saves(0x6)) return MOE_ISA_SCALAR;  // XMM|YMM state
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return MOE_ISA_SCALAR;
  const bool avx2 = b & bit_AVX2;
  const bool avx512 = (b & bit_AVX512F) && (b & bit_AVX512BW) && (b & bit_AVX512VL) &&
                      (b & bit_AVX512DQ) && (c & bit_AVX512VNNI);
  const bool amx = (d & (1u << 24)) && (d & (1u << 25));  // AMX-TILE, AMX-INT8 (leaf 7, EDX)
  if (avx512 && fma && f16c && os_saves(0xE6)) {            // + opmask, ZMM
    // XTILECFG and XTILEDATA in XCR0 (bits 17, 18), then the process's permission.
    if (amx && os_saves(0x60000) && os_permits_tiles()) return MOE_ISA_AMX;
    return MOE_ISA_AVX512;
  }
  if (avx2 && fma && f16c) return MOE_ISA_AVX2;
  return MOE_ISA_SCALAR;
}

int initial_isa() {
  int best = detect();
  // MOE_ISA=scalar|avx2|avx512|amx forces a lower level (tests run every path this way;
  // MOE_ISA=avx512 on an AMX machine runs the VNNI GEMMs for comparison).
  if (const char *env = std::getenv("MOE_ISA")) {
    for (int isa = MOE_ISA_SCALAR; isa <= best; ++isa)
      if (std::strcmp(env, moe_isa_name(isa)) == 0) return isa;
  }
  return best;
}

// Gathers are fast on Intel cores from Sapphire Rapids on, the first with AVX512-FP16 (leaf 7,
// EDX bit 23); Ice Lake's, under the Gather Data Sampling microcode, and AMD's are not.
int detect_gather() {
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return 0;
  const bool intel = b == 0x756e6547 && d == 0x49656e69 && c == 0x6c65746e;  // "GenuineIntel"
  if (!intel || !__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
  return (d >> 23) & 1;
}

int initial_gather() {
  if (const char *env = std::getenv("MOE_GATHER")) {
    if (std::strcmp(env, "0") == 0) return 0;
    if (std::strcmp(env, "1") == 0) return 1;
  }
  return detect_gather();
}

int g_active = -1;
std::atomic<int> g_gather_forced{-1};  // read by the kernels on every thread; -1: the default

}  // namespace

MOE_API int moe_isa_detected(void) { return detect(); }

MOE_API int moe_isa_active(void) {
  if (g_active < 0) g_active = initial_isa();
  return g_active;
}

MOE_API int moe_isa_force(int isa) {
  if (isa < MOE_ISA_SCALAR || isa > detect()) return -1;
  g_active = isa;
  return 0;
}

MOE_API int moe_gather_active(void) {
  static const int initial = initial_gather();  // once, thread-safe
  const int forced = g_gather_forced.load(std::memory_order_relaxed);
  return forced >= 0 ? forced : initial;
}

MOE_API int moe_gather_force(int on) {
  if (on != 0 && on != 1) return -1;
  g_gather_forced.store(on, std::memory_order_relaxed);
  return 0;
}

MOE_API const char *moe_isa_name(int isa) {
  switch (isa) {
    case MOE_ISA_SCALAR: return "scalar";
    case MOE_ISA_AVX2: return "avx2";
    case MOE_ISA_AVX512: return "avx512";
    case MOE_ISA_AMX: return "amx";
    default: return "unknown";
  }
}
