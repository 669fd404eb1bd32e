// Exported kernels live here; see api.h.
#include "api.h"
