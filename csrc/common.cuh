// Shared helpers of the trtalk kernels (internal).
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "trtalk_kernels.h"

namespace trtalk {

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

inline int ceil_div(long long a, long long b) { return static_cast<int>((a + b - 1) / b); }

// Status of the launch just made on this thread (0 when it was queued).
inline int launch_status() { return static_cast<int>(cudaGetLastError()); }

}  // namespace trtalk
