// Library identity and device checks of trtalk_kernels.
#include "common.cuh"

namespace trtalk {
namespace {
__global__ void probe_kernel(int* p) {
  if (p) *p = 1;
}
}  // namespace
}  // namespace trtalk

extern "C" {

int trtalk_abi_version(void) { return TRTALK_KERNELS_ABI_VERSION; }

int trtalk_cuda_runtime_version(void) { return CUDART_VERSION; }

const char* trtalk_error_string(int code) {
  switch (code) {
    case TRTALK_OK: return "no error";
    case TRTALK_ERR_BAD_ARGUMENT: return "trtalk_kernels: bad argument (null pointer or shape)";
    case TRTALK_ERR_UNSUPPORTED: return "trtalk_kernels: shape or device not supported";
    default: return cudaGetErrorString(static_cast<cudaError_t>(code));
  }
}

int trtalk_check_device(int device) {
  int driver = 0;
  cudaError_t rc = cudaDriverGetVersion(&driver);
  if (rc != cudaSuccess) return static_cast<int>(rc);
  if (driver == 0) return static_cast<int>(cudaErrorNoDevice);
  if (driver < CUDART_VERSION) return static_cast<int>(cudaErrorInsufficientDriver);
  int count = 0;
  rc = cudaGetDeviceCount(&count);
  if (rc != cudaSuccess) return static_cast<int>(rc);
  if (device < 0 || device >= count) return static_cast<int>(cudaErrorInvalidDevice);
  int previous = 0;
  cudaGetDevice(&previous);
  rc = cudaSetDevice(device);
  if (rc == cudaSuccess) {
    // Fails with cudaErrorNoKernelImageForDevice / InvalidDeviceFunction when no SASS or PTX in
    // this library suits the device's compute capability.
    cudaFuncAttributes attr;
    rc = cudaFuncGetAttributes(&attr, trtalk::probe_kernel);
  }
  cudaSetDevice(previous);
  return static_cast<int>(rc);
}

}  // extern "C"
