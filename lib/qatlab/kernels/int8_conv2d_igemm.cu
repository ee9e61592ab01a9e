// int8 convolution as an implicit GEMM on tensor cores (mma.sync m16n8k32 s8), sm_80 / sm_90.
//
//   Y[n, oh, ow, k] = sum_{r, s, c} X[n, oh*sh - ph + r*dh, ow*sw - pw + s*dw, c] * Wt[k, r, s, c]
//
//   X  int8 NHWC [N, H, W, C]        Wt int8 KRSC [K, R, S, C] (out, kh, kw, in)
//   Y  NHWC [N, OH, OW, K]: int32 accumulators, or 8-bit codes through the fused epilogue
//
// GEMM view: rows m = (n, oh, ow) (M = N*OH*OW, so the row-major [M, K] result *is* the
// NHWC output), columns = output channels, reduction index kk = (r*S + s)*C + c over
// Kg = R*S*C. In that order the KRSC weight flattened per output channel is exactly
// the GEMM kernel's B operand [N, K] ("col" for mma.sync). A (the im2col matrix) is never
// materialized: each 128 x 64 K tile of A is gathered from X straight into shared memory.
// Out-of-image taps (padding) read the int8 code `pad_value` (the caller's real zero,
// see conv_reference.py), not 0.
//
// Entry points (extern "C" so CuPy's RawModule finds them by plain name), one per gather
// width VEC = 16, 4, 1 bytes, chosen by the launcher from C:
//   int8_conv2d_igemm_s32_v{VEC}      -> int32 Y
//   int8_conv2d_igemm_requant_v{VEC}  -> 8-bit codes: requant(acc + bias[k]) * mult[k] + zp[k]
//
// Launch contract (checked by the Python launcher, not here):
//   blockDim = 256, grid = (ceil(M/128), ceil(K/128)), dynamic smem = STAGES*(BM+BN)*LDS;
//   C % VEC == 0; Wt is the [K, Kp] row-major view of the weights with the reduction
//   zero-padded to Kp = roundup(Kg, 16) (cp.async moves 16-byte chunks of B);
//   X VEC-byte and Wt 16-byte aligned; N*H*W*C < 2^31 and M < 2^31 (input offsets are
//   32-bit; output offsets are 64-bit).
//
// Why one tap per chunk: with C % VEC == 0 and chunk starts at multiples of VEC, the VEC
// bytes of a chunk are consecutive channels of one (r, s) tap, i.e. VEC consecutive,
// aligned bytes of one input pixel. So a chunk is one cp.async (16 or 4 bytes) or,
// when it falls outside the image, one shared store of the replicated pad byte. VEC = 1
// (C odd or 2 mod 4, e.g. RGB input layers) loads bytes synchronously: correct and
// simple; such layers are small.
//
// Tiling, pipeline, ldmatrix/mma fragments and the epilogue are int8_gemm_mma.cu's,
// shared through qatlab_mma_tile.cuh (see the GEMM's header for the bank and register
// notes); only the A-side loader differs. Its per-row state (n, oh, ow -> input origin) is computed once per
// CTA into a 2 KiB table in shared memory rather than in registers, which keeps the
// kernel inside the 128 registers of __launch_bounds__(256, 2).
//
// Known limits (untuned; benchmarks/kernels.py measures them): one 128 x 128 CTA tile
// for every layer, so K = 64 layers leave half of each B tile zero, and small M (batch
// 1 at 7x7 = 49 rows) launches a handful of CTAs with no split-K to fill the GPU.

#include "qatlab_epilogue.cuh"
#include "qatlab_ptx.cuh"
#include "qatlab_mma_tile.cuh"

struct ConvShape {
    int H, W, C, K;   // input height, width, channels; output channels
    int S, OH, OW;    // filter width; output height, width
    int sh, sw, ph, pw, dh, dw;
    int M, Kg, Kp;    // GEMM view: rows, reduction R*S*C, padded reduction (B's row length)
};

// Gather one 128 x 64 K tile of the implicit im2col matrix A into shared memory.
// rowinfo[row] = (ih0, iw0, off0): the input coordinates of tap (0, 0) of output pixel
// m0 + row and the element offset of that (possibly out-of-image) position in X.
template <int VEC>
__device__ __forceinline__ void load_a_tile(unsigned char* As, const signed char* __restrict__ X,
                                            const int4* rowinfo, const ConvShape& p, int k0, int tid,
                                            unsigned pad4) {
    constexpr int CPR = BK / VEC;        // chunks per 64-byte row segment
    constexpr int RPP = THREADS / CPR;   // rows covered by one pass of the block
    static_assert(BM % RPP == 0, "passes must tile BM");
    const int col = (tid % CPR) * VEC;   // the same for every pass: decompose kk once
    const int kk = k0 + col;
    const int r = kk / (p.S * p.C);
    const int rem = kk - r * (p.S * p.C);
    const int s = rem / p.C;
    const int c = rem - s * p.C;
    const int dih = r * p.dh, diw = s * p.dw;
    const int tap = (dih * p.W + diw) * p.C + c;  // offset of this tap from tap (0, 0)
    const bool kin = kk < p.Kg;                   // kk >= Kg: B is zero there, any A will do
#pragma unroll
    for (int i = 0; i < BM / RPP; ++i) {
        const int row = tid / CPR + i * RPP;
        const int4 ri = rowinfo[row];
        const int ih = ri.x + dih, iw = ri.y + diw;
        // unsigned compare = 0 <= ih < H in one test
        const bool inside = kin && static_cast<unsigned>(ih) < static_cast<unsigned>(p.H) &&
                            static_cast<unsigned>(iw) < static_cast<unsigned>(p.W);
        unsigned char* dst = As + row * LDS + col;
        const signed char* src = X + (ri.z + tap);  // dereferenced only when inside
        if (VEC == 16) {
            if (inside) cp_async_16(smem_u32(dst), src, 16);
            else *reinterpret_cast<uint4*>(dst) = make_uint4(pad4, pad4, pad4, pad4);
        } else if (VEC == 4) {
            if (inside) cp_async_4(smem_u32(dst), src, 4);
            else *reinterpret_cast<unsigned*>(dst) = pad4;
        } else {
            *dst = inside ? static_cast<unsigned char>(*src) : static_cast<unsigned char>(pad4);
        }
    }
}

// B = weights [K, Kp]: the GEMM kernel's loader. 128 rows x 4 chunks of 16 B, two per thread.
__device__ __forceinline__ void load_b_tile(unsigned char* Bs, const signed char* __restrict__ Wt,
                                            const ConvShape& p, int n0, int k0, int tid) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int c = tid + i * THREADS;
        const int row = c >> 2;
        const int col = (c & 3) * 16;
        const int k = k0 + col;
        const bool ok = (n0 + row < p.K) && k < p.Kp;  // Kp % 16 == 0: chunks are all in or out
        const signed char* src = ok ? Wt + static_cast<long long>(n0 + row) * p.Kp + k : Wt;
        cp_async_16(smem_u32(Bs + row * LDS + col), src, ok ? 16 : 0);
    }
}

template <int VEC>
__device__ __forceinline__ void load_tile(unsigned char* smem, int stage, const signed char* X,
                                          const signed char* Wt, const int4* rowinfo, const ConvShape& p,
                                          int n0, int k0, int tid, unsigned pad4) {
    unsigned char* As = smem + stage * (BM + BN) * LDS;
    load_a_tile<VEC>(As, X, rowinfo, p, k0, tid, pad4);
    load_b_tile(As + BM * LDS, Wt, p, n0, k0, tid);
}

template <int VEC, bool FUSED>
__device__ __forceinline__ void conv_igemm(const signed char* __restrict__ X, const signed char* __restrict__ Wt,
                                           int* __restrict__ Y32, const int* __restrict__ bias,
                                           const double* __restrict__ mult, const int* __restrict__ zp,
                                           signed char* __restrict__ Y8, const ConvShape& p, int pad_value,
                                           int qmin, int qmax) {
    extern __shared__ __align__(128) unsigned char smem[];
    __shared__ int4 rowinfo[BM];
    const MmaCta cta = mma_cta();  // lane, warp slab, CTA tile origin (grouped rasterization)
    const int tid = cta.tid, m0 = cta.m0, n0 = cta.n0;
    const unsigned pad4 = (static_cast<unsigned>(pad_value) & 0xffu) * 0x01010101u;

    if (tid < BM) {
        const int m = m0 + tid;
        // Rows past M get an origin far outside the image: every tap reads the pad value,
        // and the epilogue never stores them.
        int4 ri = make_int4(-(1 << 30), -(1 << 30), 0, 0);
        if (m < p.M) {
            const int n = m / (p.OH * p.OW);
            const int pix = m - n * (p.OH * p.OW);
            const int oh = pix / p.OW;
            const int ow = pix - oh * p.OW;
            ri.x = oh * p.sh - p.ph;
            ri.y = ow * p.sw - p.pw;
            ri.z = ((n * p.H + ri.x) * p.W + ri.y) * p.C;
        }
        rowinfo[tid] = ri;
    }
    __syncthreads();

    // The GEMM view's [M, N] output is Y's NHWC [N*OH*OW, K].
    mma_tile_gemm<FUSED>(smem, cta, (p.Kp + BK - 1) / BK, p.M, p.K, Y32, bias, mult, zp, Y8, qmin, qmax,
                         [=](int stage, int k0) { load_tile<VEC>(smem, stage, X, Wt, rowinfo, p, n0, k0, tid, pad4); });
}

// The geometry travels as plain ints (CuPy passes scalars, not structs).
#define CONV_ARGS                                                                                 \
    int H, int W, int C, int K, int S, int OH, int OW, int sh, int sw, int ph, int pw, int dh, int dw, \
        int M, int Kg, int Kp, int pad_value
#define CONV_SHAPE ConvShape{H, W, C, K, S, OH, OW, sh, sw, ph, pw, dh, dw, M, Kg, Kp}

#define DEFINE_IGEMM(VEC)                                                                                    \
    extern "C" __global__ void __launch_bounds__(THREADS, 2)                                                 \
    int8_conv2d_igemm_s32_v##VEC(const signed char* __restrict__ X, const signed char* __restrict__ Wt,      \
                                 int* __restrict__ Y, CONV_ARGS) {                                           \
        conv_igemm<VEC, false>(X, Wt, Y, nullptr, nullptr, nullptr, nullptr, CONV_SHAPE, pad_value, 0, 0);   \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(THREADS, 2)                                                 \
    int8_conv2d_igemm_requant_v##VEC(const signed char* __restrict__ X, const signed char* __restrict__ Wt,  \
                                     const int* __restrict__ bias, const double* __restrict__ mult,          \
                                     const int* __restrict__ zp, signed char* __restrict__ Y, CONV_ARGS,     \
                                     int qmin, int qmax) {                                                   \
        conv_igemm<VEC, true>(X, Wt, nullptr, bias, mult, zp, Y, CONV_SHAPE, pad_value, qmin, qmax);         \
    }

DEFINE_IGEMM(16)
DEFINE_IGEMM(4)
DEFINE_IGEMM(1)
