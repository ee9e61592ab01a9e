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

#include "qatlab_epilogue.cuh"
#include "qatlab_ptx.cuh"

#ifndef STAGES
#define STAGES 3
#endif

#define BM 128
#define BN 128
#define BK 64             // bytes (= int8 elements) of K per stage
#define LDS 80            // padded smem row stride in bytes (see bank note above)
#define THREADS 256
#define GROUP_M 8         // m-tiles per rasterization group (L2 reuse, see below)

static_assert(STAGES >= 2, "the pipeline needs at least two stages");

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
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int warp_m = warp >> 2;  // 0..1 -> 64-row slab
    const int warp_n = warp & 3;   // 0..3 -> 32-column slab
    // Grouped rasterization: CTAs are launched x-fastest, so a naive mapping runs
    // one n-column of tiles against every m-tile, streaming all of A through L2 per
    // wave (A is 64 MiB at 8192^3, more than an H100's 50 MiB L2). Walking GROUP_M
    // m-tiles down before moving right keeps a GROUP_M x (wave / GROUP_M) block of
    // tiles resident: both operand panels are reused from L2. Bijective remap.
    int bm, bn;
    {
        const int grid_m = gridDim.x, grid_n = gridDim.y;
        const int pid = blockIdx.y * grid_m + blockIdx.x;
        const int per_group = GROUP_M * grid_n;
        const int first_m = (pid / per_group) * GROUP_M;
        const int gm = min(grid_m - first_m, GROUP_M);
        const int r = pid - (pid / per_group) * per_group;
        bm = first_m + r % gm;
        bn = r / gm;
    }
    const int m0 = bm * BM;
    const int n0 = bn * BN;

    int acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0;

    const int ktiles = (K + BK - 1) / BK;

    // Prologue: fill STAGES-1 slots. Always commit (even an empty group) so that
    // wait_group<STAGES-2> below counts groups the same way on every iteration.
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ktiles) load_tile(smem, s, A, B, M, N, K, m0, n0, s * BK, tid);
        cp_async_commit();
    }

    // ldmatrix lane -> (row, 16-byte half) maps; see the fragment layouts of
    // mma.m16n8k32 in the PTX ISA. A x4: matrices (rows 0-7,k 0-15), (rows 8-15,k 0-15),
    // (rows 0-7,k 16-31), (rows 8-15,k 16-31) = a0..a3. B x4 covers two n8 tiles:
    // (n 0-7,k 0-15), (n 0-7,k 16-31), (n 8-15,k 0-15), (n 8-15,k 16-31) = b0,b1 of
    // tile 0 then b0,b1 of tile 1.
    const int a_row = warp_m * 64 + (lane & 7) + ((lane >> 3) & 1) * 8;
    const int a_col = (lane >> 4) * 16;
    const int b_row = warp_n * 32 + (lane & 7) + (lane >> 4) * 8;
    const int b_col = ((lane >> 3) & 1) * 16;

    for (int kt = 0; kt < ktiles; ++kt) {
        // Tile kt has landed once at most STAGES-2 younger groups are in flight; the
        // barrier also guarantees every warp is done with slot (kt-1) % STAGES, which
        // the prefetch below overwrites.
        cp_async_wait<STAGES - 2>();
        __syncthreads();

        const int pf = kt + STAGES - 1;
        if (pf < ktiles) load_tile(smem, pf % STAGES, A, B, M, N, K, m0, n0, pf * BK, tid);
        cp_async_commit();

        const unsigned char* As = smem + (kt % STAGES) * (BM + BN) * LDS;
        const unsigned char* Bs = As + BM * LDS;
        const unsigned a_base = smem_u32(As + a_row * LDS + a_col);
        const unsigned b_base = smem_u32(Bs + b_row * LDS + b_col);

#pragma unroll
        for (int ks = 0; ks < BK / 32; ++ks) {
            unsigned af[4][4];
            unsigned bf[4][2];
#pragma unroll
            for (int i = 0; i < 4; ++i)
                ldmatrix_x4(af[i][0], af[i][1], af[i][2], af[i][3], a_base + i * 16 * LDS + ks * 32);
#pragma unroll
            for (int j = 0; j < 2; ++j)
                ldmatrix_x4(bf[2 * j][0], bf[2 * j][1], bf[2 * j + 1][0], bf[2 * j + 1][1],
                            b_base + j * 16 * LDS + ks * 32);
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) mma_s8(acc[i][j], af[i], bf[j]);
        }
    }
    // Drain the (empty) trailing groups before the CTA exits.
    cp_async_wait<0>();

    // Epilogue straight from registers. Accumulator layout of m16n8: c0,c1 at
    // (row g, cols 2t, 2t+1), c2,c3 at (row g+8, same cols); g = lane/4, t = lane%4.
    const int g = lane >> 2;
    const int t = lane & 3;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int col = n0 + warp_n * 32 + j * 8 + t * 2;
        // Per-column parameters are loaded once per n-tile, not per element.
        int bias0 = 0, bias1 = 0, zp0 = 0, zp1 = 0;
        double mu0 = 0.0, mu1 = 0.0;
        if (FUSED) {
            if (col < N) { bias0 = bias[col]; mu0 = mult[col]; zp0 = zp[col]; }
            if (col + 1 < N) { bias1 = bias[col + 1]; mu1 = mult[col + 1]; zp1 = zp[col + 1]; }
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = m0 + warp_m * 64 + i * 16 + g + h * 8;
                if (row >= M) continue;
                const long long off = static_cast<long long>(row) * N + col;
                const int v0 = acc[i][j][2 * h];
                const int v1 = acc[i][j][2 * h + 1];
                if (FUSED) {
                    if (col < N) Y[off] = static_cast<signed char>(qatlab_requant(v0, bias0, mu0, zp0, qmin, qmax));
                    if (col + 1 < N) Y[off + 1] = static_cast<signed char>(qatlab_requant(v1, bias1, mu1, zp1, qmin, qmax));
                } else if (col + 1 < N && (N & 1) == 0) {
                    // even N: (row*N + col) is even, so the int2 store is 8-byte aligned
                    *reinterpret_cast<int2*>(C + off) = make_int2(v0, v1);
                } else {
                    if (col < N) C[off] = v0;
                    if (col + 1 < N) C[off + 1] = v1;
                }
            }
        }
    }
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
