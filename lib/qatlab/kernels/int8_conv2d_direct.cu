// Direct int8 convolution with __dp4a: the plain, readable twin of int8_conv2d_igemm.cu.
//
//   Y[n, oh, ow, k] = sum_{r, s, c} X[n, oh*sh - ph + r*dh, ow*sw - pw + s*dw, c] * Wt[k, r, s, c]
//
//   X int8 NHWC [N, H, W, C], Wt int8 KRSC [K, R, S, C], Y NHWC [N, OH, OW, K] (int32, or
//   8-bit codes through the fused epilogue). Out-of-image taps read `pad_value`.
//
// One thread block computes an output tile of TILE_H x TILE_W pixels x TILE_K output
// channels of one image. It walks the input channels in slices of 16 (one int4 = 16
// int8 channels of one pixel) and for each slice stages in shared memory
//   * the input patch the tile reads: PH x PW pixels, the tile plus the halo the
//     (dilated, strided) filter reaches, PH = (TILE_H - 1)*sh + (R - 1)*dh + 1;
//   * the filter slice: TILE_K x R x S taps, 16 channels each.
// Every thread owns one output pixel and 8 output channels (8 int32 accumulators) and
// adds 16 channels of one tap with four __dp4a (4 MACs each) per output channel.
// Channels past C are zero in the filter slice, so they add nothing whatever the
// input holds; that is how C % 16 != 0 is handled.
//
// Launch contract (checked by the Python launcher): blockDim = 256,
// grid = (ceil(OH/8) * ceil(OW/8), ceil(K/32), N),
// dynamic smem = (PH*PW + TILE_K*R*S) * 16 bytes; VEC16 instances need C % 16 == 0 and
// X, Wt 16-byte aligned. N*H*W*C, K*R*S*C and N*OH*OW*K < 2^31.
//
// Shared-memory reads: a warp is 32 pixels of the same 8 output channels, so the filter
// reads are broadcasts; the input reads are 16-byte loads of neighbouring pixels.

#include "qatlab_epilogue.cuh"

#define TILE_H 8
#define TILE_W 8
#define TILE_K 32
#define K_PER_THREAD 8
#define THREADS (TILE_H * TILE_W * (TILE_K / K_PER_THREAD))  // 256

// 16 channels [c0, c0 + 16) of one pixel (or filter tap) starting at p as an int4.
// Channels at or past C read as 0.
template <bool VEC16>
__device__ __forceinline__ int4 load16(const signed char* __restrict__ p, int c0, int C) {
    if (VEC16) return *reinterpret_cast<const int4*>(p);
    unsigned w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
    for (int j = 0; j < 16; ++j)
        if (c0 + j < C) w[j / 4] |= static_cast<unsigned>(static_cast<unsigned char>(p[j])) << (8 * (j % 4));
    return make_int4(static_cast<int>(w[0]), static_cast<int>(w[1]), static_cast<int>(w[2]), static_cast<int>(w[3]));
}

__device__ __forceinline__ int dot16(int4 a, int4 b, int acc) {
    acc = __dp4a(a.x, b.x, acc);
    acc = __dp4a(a.y, b.y, acc);
    acc = __dp4a(a.z, b.z, acc);
    return __dp4a(a.w, b.w, acc);
}

template <bool VEC16, bool FUSED>
__device__ __forceinline__ void conv_direct(const signed char* __restrict__ X, const signed char* __restrict__ Wt,
                                            int* __restrict__ Y32, const int* __restrict__ bias,
                                            const double* __restrict__ mult, const int* __restrict__ zp,
                                            signed char* __restrict__ Y8, int H, int W, int C, int K, int R,
                                            int S, int OH, int OW, int sh, int sw, int ph, int pw, int dh,
                                            int dw, int pad_value, int qmin, int qmax) {
    extern __shared__ int4 smem[];
    const int PH = (TILE_H - 1) * sh + (R - 1) * dh + 1;
    const int PW = (TILE_W - 1) * sw + (S - 1) * dw + 1;
    int4* in_s = smem;              // [PH][PW]       one int4 = 16 channels of a pixel
    int4* w_s = smem + PH * PW;     // [TILE_K][R*S]  one int4 = 16 channels of a tap

    // Which tile this block computes.
    const int tiles_w = (OW + TILE_W - 1) / TILE_W;
    const int oh0 = (blockIdx.x / tiles_w) * TILE_H;
    const int ow0 = (blockIdx.x % tiles_w) * TILE_W;
    const int k0 = blockIdx.y * TILE_K;
    const int n = blockIdx.z;
    // Which outputs this thread computes: pixel (py, px) of the tile, channels kq*8 .. kq*8+7.
    const int tid = threadIdx.x;
    const int px = tid % TILE_W;
    const int py = (tid / TILE_W) % TILE_H;
    const int kq = tid / (TILE_H * TILE_W);
    // Input coordinates of the patch's top-left pixel.
    const int ih0 = oh0 * sh - ph;
    const int iw0 = ow0 * sw - pw;
    const unsigned pad4 = (static_cast<unsigned>(pad_value) & 0xffu) * 0x01010101u;
    const int4 pad16 = make_int4(pad4, pad4, pad4, pad4);

    int acc[K_PER_THREAD];
#pragma unroll
    for (int j = 0; j < K_PER_THREAD; ++j) acc[j] = 0;

    for (int c0 = 0; c0 < C; c0 += 16) {
        // Stage the input patch: out-of-image pixels hold the pad code.
        for (int i = tid; i < PH * PW; i += THREADS) {
            const int ih = ih0 + i / PW, iw = iw0 + i % PW;
            if (ih >= 0 && ih < H && iw >= 0 && iw < W)
                in_s[i] = load16<VEC16>(X + ((static_cast<long long>(n) * H + ih) * W + iw) * C + c0, c0, C);
            else
                in_s[i] = pad16;
        }
        // Stage the filter slice: output channels past K are zero (never stored anyway).
        for (int i = tid; i < TILE_K * R * S; i += THREADS) {
            const int k = k0 + i / (R * S), rs = i % (R * S);
            w_s[i] = k < K ? load16<VEC16>(Wt + (static_cast<long long>(k) * R * S + rs) * C + c0, c0, C)
                           : make_int4(0, 0, 0, 0);
        }
        __syncthreads();
        for (int r = 0; r < R; ++r) {
            for (int s = 0; s < S; ++s) {
                const int4 xv = in_s[(py * sh + r * dh) * PW + px * sw + s * dw];
#pragma unroll
                for (int j = 0; j < K_PER_THREAD; ++j)
                    acc[j] = dot16(xv, w_s[(kq * K_PER_THREAD + j) * R * S + r * S + s], acc[j]);
            }
        }
        __syncthreads();  // before the next slice overwrites the tiles
    }

    const int oh = oh0 + py, ow = ow0 + px;
    if (oh >= OH || ow >= OW) return;
    const long long out = ((static_cast<long long>(n) * OH + oh) * OW + ow) * K;
#pragma unroll
    for (int j = 0; j < K_PER_THREAD; ++j) {
        const int k = k0 + kq * K_PER_THREAD + j;
        if (k >= K) break;
        if (FUSED)
            Y8[out + k] = static_cast<signed char>(qatlab_requant(acc[j], bias[k], mult[k], zp[k], qmin, qmax));
        else
            Y32[out + k] = acc[j];
    }
}

#define DIRECT_ARGS                                                                                   \
    int H, int W, int C, int K, int R, int S, int OH, int OW, int sh, int sw, int ph, int pw, int dh, int dw, \
        int pad_value
#define DIRECT_PASS H, W, C, K, R, S, OH, OW, sh, sw, ph, pw, dh, dw, pad_value

#define DEFINE_DIRECT(SUFFIX, VEC16)                                                                     \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                \
    int8_conv2d_direct_s32##SUFFIX(const signed char* __restrict__ X, const signed char* __restrict__ Wt, \
                                   int* __restrict__ Y, DIRECT_ARGS) {                                   \
        conv_direct<VEC16, false>(X, Wt, Y, nullptr, nullptr, nullptr, nullptr, DIRECT_PASS, 0, 0);     \
    }                                                                                                    \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                \
    int8_conv2d_direct_requant##SUFFIX(const signed char* __restrict__ X, const signed char* __restrict__ Wt, \
                                       const int* __restrict__ bias, const double* __restrict__ mult,    \
                                       const int* __restrict__ zp, signed char* __restrict__ Y, DIRECT_ARGS, \
                                       int qmin, int qmax) {                                             \
        conv_direct<VEC16, true>(X, Wt, nullptr, bias, mult, zp, Y, DIRECT_PASS, qmin, qmax);           \
    }

DEFINE_DIRECT(_v16, true)
DEFINE_DIRECT(_v1, false)
