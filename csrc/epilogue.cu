// Element-wise tails of the generator layers: noise + bias + leaky ReLU * gain, and ToRGB.
#include "common.cuh"

namespace trtalk {
namespace {

__global__ void bias_act_noise_kernel(const __half* __restrict__ x, const float* __restrict__ bias,
                                      const float* __restrict__ noise, long long noise_stride,
                                      const float* __restrict__ noise_weight, long long total,
                                      int channels, int hw, float alpha, float gain,
                                      __half* __restrict__ out) {
  const float nw = noise_weight ? noise_weight[0] : 0.f;
  for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (long long)gridDim.x * blockDim.x) {
    const int p = (int)(idx % hw);
    const long long bc = idx / hw;
    const int c = (int)(bc % channels);
    const long long b = bc / channels;
    float v = __half2float(x[idx]);
    if (noise) v += nw * noise[b * noise_stride + p];
    if (bias) v += bias[c];
    v = (v < 0.f ? v * alpha : v) * gain;
    out[idx] = __float2half(v);
  }
}

// One block per (pixel tile, sample): the sample's 3 x C modulated weights live in shared memory.
__global__ void to_rgb_kernel(const __half* __restrict__ x, const float* __restrict__ weight,
                              const float* __restrict__ styles, const float* __restrict__ bias,
                              const float* __restrict__ skip, const float* __restrict__ blur,
                              int in_ch, int h, int w, float* __restrict__ out) {
  extern __shared__ float ws[];  // [3][in_ch]
  const int b = blockIdx.y;
  for (int k = threadIdx.x; k < 3 * in_ch; k += blockDim.x)
    ws[k] = weight[k] * styles[(size_t)b * in_ch + k % in_ch];
  __syncthreads();
  const int hw = h * w;
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= hw) return;
  const int y = p / w, xx = p - y * w;
  const __half* xb = x + (size_t)b * in_ch * hw + p;
  float acc[3] = {0.f, 0.f, 0.f};
  for (int c = 0; c < in_ch; ++c) {
    const float v = __half2float(xb[(size_t)c * hw]);
    acc[0] += ws[c] * v;
    acc[1] += ws[in_ch + c] * v;
    acc[2] += ws[2 * in_ch + c] * v;
  }
  if (skip) {
    // up2(skip)[Y] = sum_{q,t : Y = 2q + t - 1} skip[q] * blur[t] (transposed conv, stride 2, pad 1)
    const int sh = h / 2, sw = w / 2;
    for (int ty = 0; ty < 4; ++ty) {
      const int ny = y + 1 - ty;
      if (ny & 1) continue;
      const int qy = ny / 2;
      if (qy < 0 || qy >= sh) continue;
      for (int tx = 0; tx < 4; ++tx) {
        const int nx = xx + 1 - tx;
        if (nx & 1) continue;
        const int qx = nx / 2;
        if (qx < 0 || qx >= sw) continue;
        const float g = blur[ty * 4 + tx];
        for (int r = 0; r < 3; ++r)
          acc[r] += g * skip[(((size_t)b * 3 + r) * sh + qy) * sw + qx];
      }
    }
  }
  for (int r = 0; r < 3; ++r)
    out[((size_t)b * 3 + r) * hw + p] = acc[r] + (bias ? bias[r] : 0.f);
}

}  // namespace
}  // namespace trtalk

using namespace trtalk;

extern "C" {

int trtalk_bias_act_noise(const void* x_half, const float* bias, const float* noise,
                          long long noise_batch_stride, const float* noise_weight, int batch,
                          int channels, int height, int width, float alpha, float gain,
                          void* out_half, void* stream) {
  if (!x_half || !out_half || batch <= 0 || channels <= 0 || height <= 0 || width <= 0 ||
      (noise && !noise_weight))
    return TRTALK_ERR_BAD_ARGUMENT;
  const long long total = (long long)batch * channels * height * width;
  const int blocks = ceil_div(total, 256) < 65535 ? ceil_div(total, 256) : 65535;
  bias_act_noise_kernel<<<blocks, 256, 0, as_stream(stream)>>>(
      static_cast<const __half*>(x_half), bias, noise, noise_batch_stride, noise_weight, total,
      channels, height * width, alpha, gain, static_cast<__half*>(out_half));
  return launch_status();
}

int trtalk_to_rgb(const void* x_half, const float* weight, const float* styles, const float* bias,
                  const float* skip, const float* blur, int batch, int in_ch, int height,
                  int width, float* out, void* stream) {
  if (!x_half || !weight || !styles || !out || (skip && !blur) || batch <= 0 || batch > 65535 ||
      in_ch <= 0 || height <= 0 || width <= 0 || (skip && (height % 2 || width % 2)))
    return TRTALK_ERR_BAD_ARGUMENT;
  const size_t smem = sizeof(float) * 3 * in_ch;
  if (smem > 48 * 1024) return TRTALK_ERR_UNSUPPORTED;
  dim3 grid(ceil_div((long long)height * width, 256), batch);
  to_rgb_kernel<<<grid, 256, smem, as_stream(stream)>>>(static_cast<const __half*>(x_half), weight,
                                                        styles, bias, skip, blur, in_ch, height,
                                                        width, out);
  return launch_status();
}

}  // extern "C"
