/* trtalk_kernels: fused CUDA kernels for the modulated convolutions of the PC-AVS generator.
 *
 * Plain C ABI, so that ctypes (the PyTorch ops) and a TensorRT plugin's enqueue can both call it.
 * Every function takes raw device pointers, sizes and a cudaStream_t passed as void*, launches
 * asynchronously on that stream and returns 0 or an error code (see trtalk_error_string).
 * Layouts are NCHW, contiguous. "half" pointers are IEEE fp16 (__half); the rest are float32.
 *
 * Modulated conv, the algebra (B batch, I in, O out channels, k = 1 or 3, pad k/2):
 *   out[b,o,p] = d[b,o] * sum_{i,t} W[o,i,t] * (s[b,i] * x[b,i,p+t])
 *   d[b,o]     = rsqrt(sum_i s[b,i]^2 * sum_t W[o,i,t]^2 + 1e-8)   (1 when not demodulating)
 * i.e. an implicit GEMM with M = B*H*W pixels, N = O, K = k*k*I: the style scales A on load and
 * the demodulation scales C in the epilogue, so per-sample styles cost nothing extra.
 *
 * 2x upsampling form (transposed 3x3 conv, stride 2, then the 4x4 blur g with pad (1,1)):
 * output pixel (2m+ry, 2n+rx) of phase (ry,rx) is a plain 3x3 conv (pad 1) of the input with the
 * per-phase kernel E[ry,rx] = sum of g[ty,tx] * W[ky,kx] over ry+ty-1-ky = 2(a-1),
 * rx+tx-1-kx = 2(b-1) for tap (a,b) (g = the blur flipped, as upfirdn2d correlates).  So the up
 * form is the same GEMM with N = 4*O (phase-major) and a scattering epilogue; see
 * trtalk/kernels/reference.py:phase_weights for the same algebra in PyTorch.
 */
#ifndef TRTALK_KERNELS_H_
#define TRTALK_KERNELS_H_

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TRTALK_KERNELS_ABI_VERSION 1
#define TRTALK_OK 0
#define TRTALK_ERR_BAD_ARGUMENT 10001
#define TRTALK_ERR_UNSUPPORTED 10002

#if defined(_WIN32)
#define TRTALK_API __declspec(dllexport)
#else
#define TRTALK_API __attribute__((visibility("default")))
#endif

/* ABI version of this library (TRTALK_KERNELS_ABI_VERSION); loaders refuse other values. */
TRTALK_API int trtalk_abi_version(void);
/* CUDART_VERSION the library was compiled against, e.g. 13000. */
TRTALK_API int trtalk_cuda_runtime_version(void);
/* Human-readable text of an error code returned by any function here. */
TRTALK_API const char* trtalk_error_string(int code);
/* 0 if `device` can run these kernels (driver new enough, an image for its compute capability). */
TRTALK_API int trtalk_check_device(int device);

/* Bytes of workspace trtalk_modulated_conv2d needs (packed fp16 weights, w^2 sums, demod). */
TRTALK_API size_t trtalk_modconv_workspace_size(int batch, int out_ch, int in_ch, int ksize, int up);

/* Repack weight (O x I x k x k float) into fp16 [k*k][I][N] (N = O, or 4*O phase-major when up,
 * then blur (4x4 float, gain included) is required and k must be 3) and wsq[O][I] = sum_t W^2. */
TRTALK_API int trtalk_modconv_prepare_weight(const float* weight, const float* blur, int out_ch,
                                             int in_ch, int ksize, int up, void* packed_half,
                                             float* wsq, void* stream);
/* demod[b,o] = rsqrt(sum_i styles[b,i]^2 * wsq[o,i] + 1e-8). */
TRTALK_API int trtalk_modconv_demod(const float* styles, const float* wsq, int batch, int out_ch,
                                    int in_ch, float* demod, void* stream);
/* The implicit-GEMM conv: x (B x I x H x W half), packed weights from prepare_weight, styles
 * (B x I float), demod (B x O float or NULL) -> out (B x O x H x W, or 2H x 2W when up; half). */
TRTALK_API int trtalk_modconv_igemm(const void* x_half, const void* packed_half,
                                    const float* styles, const float* demod, int batch, int in_ch,
                                    int out_ch, int height, int width, int ksize, int up,
                                    void* out_half, void* stream);
/* All three steps above with a caller-provided workspace of trtalk_modconv_workspace_size bytes. */
TRTALK_API int trtalk_modulated_conv2d(const void* x_half, const float* weight, const float* styles,
                                       const float* blur, int batch, int in_ch, int out_ch,
                                       int height, int width, int ksize, int demodulate, int up,
                                       void* workspace, void* out_half, void* stream);

/* out = leaky_relu(x + noise_weight[0] * noise + bias[c], alpha) * gain (out may equal x).
 * noise: float, element (b, y, x) at b * noise_batch_stride + y * W + x (stride 0 broadcasts);
 * noise and noise_weight may be NULL (no noise). */
TRTALK_API int trtalk_bias_act_noise(const void* x_half, const float* bias, const float* noise,
                                     long long noise_batch_stride, const float* noise_weight,
                                     int batch, int channels, int height, int width, float alpha,
                                     float gain, void* out_half, void* stream);

/* ToRGB: out[b,r] = sum_c weight[r,c] * styles[b,c] * x[b,c] + bias[r] + up2(skip)[b,r] with
 * x half (B x C x H x W), weight 3 x C float, out float B x 3 x H x W; skip (B x 3 x H/2 x W/2
 * float) may be NULL; up2 = zero-insert 2x then the 4x4 blur (gain 4), pad (2,1). */
TRTALK_API int trtalk_to_rgb(const void* x_half, const float* weight, const float* styles,
                             const float* bias, const float* skip, const float* blur, int batch,
                             int in_ch, int height, int width, float* out, void* stream);

#ifdef __cplusplus
}
#endif
#endif /* TRTALK_KERNELS_H_ */
