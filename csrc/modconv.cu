// Modulated 3x3 / 1x1 convolution, plain and 2x-upsampling, as an implicit GEMM on tensor cores.
// See trtalk_kernels.h for the algebra. FP16 storage, FP32 accumulation (WMMA 16x16x16).
#include <mma.h>

#include "common.cuh"

namespace trtalk {
namespace {

constexpr float kDemodEps = 1e-8f;

// ---------------------------------------------------------------------------------------------
// Weight preparation: O x I x k x k float -> fp16 [k*k][I][N] (N contiguous, so that the B tile
// loads coalesce) and wsq[o][i] = sum_t W[o,i,t]^2 (fp32, for the demodulation).
// Up form: N = 4*O, column phase*O + o holds the per-phase kernel E[phase] (header comment).
// One thread per (o, i) pair.
__global__ void prepare_weight_kernel(const float* __restrict__ w, const float* __restrict__ blur,
                                      int out_ch, int in_ch, int ksize, int up,
                                      __half* __restrict__ packed, float* __restrict__ wsq) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= out_ch * in_ch) return;
  const int o = idx / in_ch, i = idx % in_ch;
  const int taps = ksize * ksize;
  const float* wp = w + (size_t)idx * taps;
  float sq = 0.f;
  for (int t = 0; t < taps; ++t) sq += wp[t] * wp[t];
  wsq[idx] = sq;
  const int n_total = up ? 4 * out_ch : out_ch;
  if (!up) {
    for (int t = 0; t < taps; ++t)
      packed[((size_t)t * in_ch + i) * n_total + o] = __float2half(wp[t]);
    return;
  }
  for (int phase = 0; phase < 4; ++phase) {
    const int ry = phase / 2, rx = phase % 2;
    float e[9] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int ty = 0; ty < 4; ++ty)
      for (int ky = 0; ky < 3; ++ky) {
        const int dy = ry + ty - 1 - ky;  // in [-3, 3]; even values land on tap row dy/2 + 1
        if (dy & 1) continue;
        for (int tx = 0; tx < 4; ++tx)
          for (int kx = 0; kx < 3; ++kx) {
            const int dx = rx + tx - 1 - kx;
            if (dx & 1) continue;
            const float g = blur[(3 - ty) * 4 + (3 - tx)];  // flipped: upfirdn2d correlates
            e[(dy / 2 + 1) * 3 + (dx / 2 + 1)] += g * wp[ky * 3 + kx];
          }
      }
    for (int t = 0; t < 9; ++t)
      packed[((size_t)t * in_ch + i) * n_total + phase * out_ch + o] = __float2half(e[t]);
  }
}

// demod[b,o] = rsqrt(sum_i s[b,i]^2 wsq[o,i] + eps); one thread per (b, o).
__global__ void demod_kernel(const float* __restrict__ styles, const float* __restrict__ wsq,
                             int batch, int out_ch, int in_ch, float* __restrict__ demod) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= batch * out_ch) return;
  const int b = idx / out_ch, o = idx % out_ch;
  const float* s = styles + (size_t)b * in_ch;
  const float* q = wsq + (size_t)o * in_ch;
  float acc = 0.f;
  for (int i = 0; i < in_ch; ++i) acc += s[i] * s[i] * q[i];
  demod[idx] = rsqrtf(acc + kDemodEps);
}

// ---------------------------------------------------------------------------------------------
// Implicit GEMM. Block tile BM pixels x BN output columns, K stepped one tap and BK input
// channels at a time; 4 warps in a 2x2 layout, each owning a 32x32 accumulator (2x2 WMMA tiles).
// A[m, (t,i)] = s[b,i] * x[b,i,y+ty-pad,x+tx-pad] (zero outside the image), B[(t,i), n] = packed.
constexpr int BM = 64, BN = 64, BK = 32, THREADS = 128;
constexpr int LDA = BK + 8, LDB = BN + 8, LDC = BN + 4;  // padded rows against bank conflicts
static_assert(THREADS % BM == 0 && THREADS % BN == 0, "tile loaders assume this");

__global__ void __launch_bounds__(THREADS)
igemm_kernel(const __half* __restrict__ x, const __half* __restrict__ packed,
             const float* __restrict__ styles, const float* __restrict__ demod, int batch,
             int in_ch, int out_ch, int h, int w, int ksize, int up, __half* __restrict__ out) {
  using namespace nvcuda;
  __shared__ __align__(32) __half As[BM][LDA];
  __shared__ __align__(32) __half Bs[BK][LDB];
  __shared__ __align__(32) float Cs[BM][LDC];

  const int hw = h * w;
  const long long m_total = (long long)batch * hw;
  const int n_total = up ? 4 * out_ch : out_ch;
  const long long m0 = (long long)blockIdx.x * BM;
  const int n0 = blockIdx.y * BN;
  const int tid = threadIdx.x, warp = tid / 32, wm = warp / 2, wn = warp % 2;

  // A loader: this thread fills row am, columns ak0, ak0 + kAStep, ...
  constexpr int kAStep = THREADS / BM;
  const int am = tid % BM, ak0 = tid / BM;
  const long long gm = m0 + am;
  const bool m_valid = gm < m_total;
  int ab = 0, ay = 0, ax = 0;
  if (m_valid) {
    ab = (int)(gm / hw);
    const int p = (int)(gm - (long long)ab * hw);
    ay = p / w;
    ax = p - ay * w;
  }
  const __half* xb = x + (size_t)ab * in_ch * hw;
  const float* sb = styles + (size_t)ab * in_ch;
  // B loader: column bn, rows bk0, bk0 + kBStep, ...
  constexpr int kBStep = THREADS / BN;
  const int bn = tid % BN, bk0 = tid / BN;
  const int gn = n0 + bn;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  const int pad = ksize / 2;
  for (int tap = 0; tap < ksize * ksize; ++tap) {
    const int iy = ay + tap / ksize - pad, ix = ax + tap % ksize - pad;
    const bool in_image = m_valid && iy >= 0 && iy < h && ix >= 0 && ix < w;
    const int pix = in_image ? iy * w + ix : 0;
    const __half* wt = packed + (size_t)tap * in_ch * n_total;
    for (int c0 = 0; c0 < in_ch; c0 += BK) {
#pragma unroll
      for (int kc = ak0; kc < BK; kc += kAStep) {
        const int c = c0 + kc;
        float v = 0.f;
        if (in_image && c < in_ch) v = __half2float(xb[(size_t)c * hw + pix]) * sb[c];
        As[am][kc] = __float2half(v);
      }
#pragma unroll
      for (int kc = bk0; kc < BK; kc += kBStep) {
        const int c = c0 + kc;
        Bs[kc][bn] = (c < in_ch && gn < n_total) ? wt[(size_t)c * n_total + gn] : __float2half(0.f);
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < BK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa[2];
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb[2];
        for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], &As[wm * 32 + i * 16][kk], LDA);
        for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], &Bs[kk][wn * 32 + j * 16], LDB);
        for (int i = 0; i < 2; ++i)
          for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
      }
      __syncthreads();
    }
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(&Cs[wm * 32 + i * 16][wn * 32 + j * 16], acc[i][j], LDC,
                              wmma::mem_row_major);
  __syncthreads();

  // Epilogue: demodulate and scatter (consecutive threads take consecutive pixels: coalesced).
  const int ow = up ? 2 * w : w, oh = up ? 2 * h : h;
  for (int idx = tid; idx < BM * BN; idx += THREADS) {
    const int m = idx % BM, n = idx / BM;
    const long long g = m0 + m;
    const int col = n0 + n;
    if (g >= m_total || col >= n_total) continue;
    const int b = (int)(g / hw);
    const int p = (int)(g - (long long)b * hw);
    const int y = p / w, xx = p - y * w;
    const int o = up ? col % out_ch : col;
    float v = Cs[m][n];
    if (demod) v *= demod[(size_t)b * out_ch + o];
    int oy = y, ox = xx;
    if (up) {
      const int phase = col / out_ch;
      oy = 2 * y + phase / 2;
      ox = 2 * xx + phase % 2;
    }
    out[(((size_t)b * out_ch + o) * oh + oy) * ow + ox] = __float2half(v);
  }
}

bool bad_shape(int batch, int in_ch, int out_ch, int ksize, int up) {
  return batch <= 0 || in_ch <= 0 || out_ch <= 0 || (ksize != 1 && ksize != 3) ||
         (up && ksize != 3);
}

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

}  // namespace
}  // namespace trtalk

using namespace trtalk;

extern "C" {

size_t trtalk_modconv_workspace_size(int batch, int out_ch, int in_ch, int ksize, int up) {
  if (bad_shape(batch, in_ch, out_ch, ksize, up)) return 0;
  const size_t n_total = up ? 4 * (size_t)out_ch : (size_t)out_ch;
  return align256(sizeof(__half) * ksize * ksize * in_ch * n_total) +
         align256(sizeof(float) * out_ch * in_ch) + align256(sizeof(float) * batch * out_ch);
}

int trtalk_modconv_prepare_weight(const float* weight, const float* blur, int out_ch, int in_ch,
                                  int ksize, int up, void* packed_half, float* wsq, void* stream) {
  if (bad_shape(1, in_ch, out_ch, ksize, up) || !weight || !packed_half || !wsq || (up && !blur))
    return TRTALK_ERR_BAD_ARGUMENT;
  const int n = out_ch * in_ch;
  prepare_weight_kernel<<<ceil_div(n, 256), 256, 0, as_stream(stream)>>>(
      weight, blur, out_ch, in_ch, ksize, up, static_cast<__half*>(packed_half), wsq);
  return launch_status();
}

int trtalk_modconv_demod(const float* styles, const float* wsq, int batch, int out_ch, int in_ch,
                         float* demod, void* stream) {
  if (batch <= 0 || out_ch <= 0 || in_ch <= 0 || !styles || !wsq || !demod)
    return TRTALK_ERR_BAD_ARGUMENT;
  demod_kernel<<<ceil_div((long long)batch * out_ch, 256), 256, 0, as_stream(stream)>>>(
      styles, wsq, batch, out_ch, in_ch, demod);
  return launch_status();
}

int trtalk_modconv_igemm(const void* x_half, const void* packed_half, const float* styles,
                         const float* demod, int batch, int in_ch, int out_ch, int height,
                         int width, int ksize, int up, void* out_half, void* stream) {
  if (bad_shape(batch, in_ch, out_ch, ksize, up) || height <= 0 || width <= 0 || !x_half ||
      !packed_half || !styles || !out_half)
    return TRTALK_ERR_BAD_ARGUMENT;
  const long long m_total = (long long)batch * height * width;
  const int n_total = up ? 4 * out_ch : out_ch;
  dim3 grid(ceil_div(m_total, BM), ceil_div(n_total, BN));
  if (grid.x > 0x7fffffffu || grid.y > 65535u) return TRTALK_ERR_UNSUPPORTED;
  igemm_kernel<<<grid, THREADS, 0, as_stream(stream)>>>(
      static_cast<const __half*>(x_half), static_cast<const __half*>(packed_half), styles, demod,
      batch, in_ch, out_ch, height, width, ksize, up, static_cast<__half*>(out_half));
  return launch_status();
}

int trtalk_modulated_conv2d(const void* x_half, const float* weight, const float* styles,
                            const float* blur, int batch, int in_ch, int out_ch, int height,
                            int width, int ksize, int demodulate, int up, void* workspace,
                            void* out_half, void* stream) {
  if (bad_shape(batch, in_ch, out_ch, ksize, up) || !workspace) return TRTALK_ERR_BAD_ARGUMENT;
  const size_t n_total = up ? 4 * (size_t)out_ch : (size_t)out_ch;
  char* ws = static_cast<char*>(workspace);
  void* packed = ws;
  float* wsq = reinterpret_cast<float*>(ws + align256(sizeof(__half) * ksize * ksize * in_ch * n_total));
  float* demod = reinterpret_cast<float*>(reinterpret_cast<char*>(wsq) +
                                          align256(sizeof(float) * out_ch * in_ch));
  int rc = trtalk_modconv_prepare_weight(weight, blur, out_ch, in_ch, ksize, up, packed, wsq, stream);
  if (rc) return rc;
  if (demodulate) {
    rc = trtalk_modconv_demod(styles, wsq, batch, out_ch, in_ch, demod, stream);
    if (rc) return rc;
  }
  return trtalk_modconv_igemm(x_half, packed, styles, demodulate ? demod : nullptr, batch, in_ch,
                              out_ch, height, width, ksize, up, out_half, stream);
}

}  // extern "C"
