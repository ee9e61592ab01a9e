// int8 x int8 -> int32 GEMM on tensor cores (mma.sync m16n8k32 s8), sm_80 / sm_90.
//
//   C[M, N] = A[M, K] . B[N, K]^T        A row-major (activations), B = weights in
//                                        their natural [out, in] layout, i.e. exactly
//                                        the "col" operand mma.sync wants.
//
// Two entry points (extern "C" so CuPy's RawModule finds them by plain name):
//   int8_gemm_mma_s32      -> int32 C
//   int8_gemm_mma_requant  -> 8-bit codes: requant(C + bias[n]) * mult[n] + zp[n]
//
// Launch contract (checked by the Python launcher, not here):
//   blockDim = 256, grid = (ceil(M/128), ceil(N/128)), dynamic smem = smem_bytes(),
//   K % 16 == 0 (the launcher zero-pads K otherwise: cp.async moves 16-byte chunks and
//   a 16-byte aligned row start needs K % 16 == 0), A and B 16-byte aligned.
//   M and N are arbitrary: out-of-range rows are zero-filled by cp.async's src-size
//   operand (no branches in the main loop) and the epilogue predicates the stores.
//
// Tiling: CTA tile 128 x 128 x 64 bytes, 8 warps as 2 (M) x 4 (N), warp tile 64 x 32
// = 4 x 4 mma tiles of 16 x 8. Per k32 step a warp issues 4 ldmatrix.x4 for A, 2 for B
// and 16 mma: 6 shared loads per 16 mma keeps the LSU well below the tensor pipe.
// Register budget: 64 int32 accumulators + 16 A + 8 B fragment registers + addressing
// = 122-124 registers (ptxas, sm_80/sm_90, no spills), under the 128 that
// __launch_bounds__(256, 2) allows, so two CTAs
// (16 warps) can share an SM to hide the cp.async / ldmatrix latency.
//
// Shared memory: STAGES ring buffers of A and B tiles, each 128 rows x 64 bytes, rows
// padded to 80 bytes. ldmatrix reads 8 rows x 16 bytes per phase; with a 64-byte
// stride rows r and r+2 land on the same banks (4-way conflict). An 80-byte stride
// (20 words) maps the 8 rows to word offsets 0,20,8,28,16,4,24,12 (mod 32): eight
// disjoint 4-bank groups, conflict free, for both ldmatrix reads and cp.async writes.
// 3 stages = 60 KiB per CTA (two CTAs fit in A100's 164 KiB and H100's 228 KiB);
// -DSTAGES=4 trades the second CTA for deeper prefetch.

// The tiling #defines (BM, BN, BK, LDS, THREADS, GROUP_M, STAGES), the pipeline, the
// warp tile and the register epilogue live in qatlab_mma_tile.cuh, shared with
// int8_conv2d_igemm.cu; this file adds the GEMM's loader and entry points.
#include "qatlab_epilogue.cuh"
#include "qatlab_ptx.cuh"
#include "qatlab_mma_tile.cuh"

// Issue the cp.async copies of one K tile (both operands) into ring slot `stage`.
// 128 rows x 4 chunks of 16 B = 512 chunks per operand, two per thread; four
// consecutive threads cover one 64-byte row segment.
__device__ __forceinline__ void load_tile(unsigned char* smem, int stage, const signed char* A,
                                          const signed char* B, int M, int N, int K, int m0, int n0,
                                          int k0, int tid) {
    unsigned char* As = smem + stage * (BM + BN) * LDS;
    unsigned char* Bs = As + BM * LDS;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        int c = tid + i * THREADS;
        int row = c >> 2;
        int col = (c & 3) * 16;
        int k = k0 + col;
        bool kin = k < K;  // K % 16 == 0, so a chunk is either fully in or fully out
        bool am = (m0 + row < M) && kin;
        bool bn = (n0 + row < N) && kin;
        // Out-of-range chunks point at the (valid) base pointer and copy 0 bytes.
        const signed char* asrc = am ? A + static_cast<long long>(m0 + row) * K + k : A;
        const signed char* bsrc = bn ? B + static_cast<long long>(n0 + row) * K + k : B;
        cp_async_16(smem_u32(As + row * LDS + col), asrc, am ? 16 : 0);
        cp_async_16(smem_u32(Bs + row * LDS + col), bsrc, bn ? 16 : 0);
    }
}

template <bool FUSED>
__device__ __forceinline__ void gemm_mma(const signed char* __restrict__ A, const signed char* __restrict__ B,
                                         int* __restrict__ C, const int* __restrict__ bias,
                                         const double* __restrict__ mult, const int* __restrict__ zp,
                                         signed char* __restrict__ Y, int M, int N, int K, int qmin, int qmax) {
    extern __shared__ __align__(128) unsigned char smem[];
    const MmaCta cta = mma_cta();  // lane, warp slab, CTA tile origin (grouped rasterization)
    const int tid = cta.tid, m0 = cta.m0, n0 = cta.n0;
    mma_tile_gemm<FUSED>(smem, cta, (K + BK - 1) / BK, M, N, C, bias, mult, zp, Y, qmin, qmax,
                         [=](int stage, int k0) { load_tile(smem, stage, A, B, M, N, K, m0, n0, k0, tid); });
}

extern "C" __global__ void __launch_bounds__(THREADS, 2)
int8_gemm_mma_s32(const signed char* __restrict__ A, const signed char* __restrict__ B, int* __restrict__ C,
                  int M, int N, int K) {
    gemm_mma<false>(A, B, C, nullptr, nullptr, nullptr, nullptr, M, N, K, 0, 0);
}

extern "C" __global__ void __launch_bounds__(THREADS, 2)
int8_gemm_mma_requant(const signed char* __restrict__ A, const signed char* __restrict__ B,
                      const int* __restrict__ bias, const double* __restrict__ mult, const int* __restrict__ zp,
                      signed char* __restrict__ Y, int M, int N, int K, int qmin, int qmax) {
    gemm_mma<true>(A, B, nullptr, bias, mult, zp, Y, M, N, K, qmin, qmax);
}
