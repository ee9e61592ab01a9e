// The CTA tiling, rasterization, software pipeline, warp tile and register epilogue
// shared by the tensor-core kernels (int8_gemm_mma.cu, int8_conv2d_igemm.cu). A kernel
// takes its MmaCta (mma_cta) and runs mma_tile_gemm with its own loader: the kernels
// differ only in how one K tile reaches shared memory. int8_gemm_mma.cu's header
// explains the tile sizes, the padded rows and the register budget.
//
// Uses qatlab_ptx.cuh and qatlab_epilogue.cuh: include it after both. It includes
// nothing itself (cupy_backend.source_with_headers inlines a .cu file's own includes).
#pragma once

#ifndef STAGES
#define STAGES 3
#endif

#define BM 128
#define BN 128
#define BK 64             // bytes (= int8 elements) of the reduction per stage
#define LDS 80            // padded smem row stride in bytes (conflict-free ldmatrix)
#define THREADS 256       // 8 warps as 2 (M) x 4 (N), warp tile 64 x 32
#define GROUP_M 8         // m-tiles per rasterization group (L2 reuse of both operands)

static_assert(STAGES >= 2, "the pipeline needs at least two stages");

// Grouped rasterization: CTAs are launched x-fastest, so a naive mapping runs one
// n-column of tiles against every m-tile, streaming all of A through L2 per wave (A is
// 64 MiB at 8192^3, more than an H100's 50 MiB L2). Walking GROUP_M m-tiles down before
// moving right keeps a GROUP_M x (wave / GROUP_M) block of tiles resident: both operand
// panels are reused from L2. A bijective remap of the CTA index to the tile (bm, bn).
__device__ __forceinline__ void grouped_cta_tile(int& bm, int& bn) {
    const int grid_m = gridDim.x, grid_n = gridDim.y;
    const int pid = blockIdx.y * grid_m + blockIdx.x;
    const int per_group = GROUP_M * grid_n;
    const int first_m = (pid / per_group) * GROUP_M;
    const int gm = min(grid_m - first_m, GROUP_M);
    const int r = pid - (pid / per_group) * per_group;
    bm = first_m + r % gm;
    bn = r / gm;
}

// Where a thread works: its lane, its warp's slab of the CTA tile (warp_m 0..1 -> 64
// rows, warp_n 0..3 -> 32 columns) and the CTA tile's origin (m0, n0) in the output
// (grouped_cta_tile). A kernel takes it first thing, before its own set-up.
struct MmaCta {
    int tid, lane, warp_m, warp_n, m0, n0;
};
__device__ __forceinline__ MmaCta mma_cta() {
    MmaCta c;
    c.tid = threadIdx.x;
    c.lane = c.tid & 31;
    const int warp = c.tid >> 5;
    c.warp_m = warp >> 2;
    c.warp_n = warp & 3;
    int bm, bn;
    grouped_cta_tile(bm, bn);
    c.m0 = bm * BM;
    c.n0 = bn * BN;
    return c;
}

// ldmatrix lane -> (row, 16-byte half) maps; see the fragment layouts of mma.m16n8k32 in
// the PTX ISA. A x4: matrices (rows 0-7,k 0-15), (rows 8-15,k 0-15), (rows 0-7,k 16-31),
// (rows 8-15,k 16-31) = a0..a3. B x4 covers two n8 tiles: (n 0-7,k 0-15), (n 0-7,k 16-31),
// (n 8-15,k 0-15), (n 8-15,k 16-31) = b0,b1 of tile 0 then b0,b1 of tile 1.
// a_addr / b_addr: this lane's shared address of its first A / B matrix row at this k32.
__device__ __forceinline__ void warp_tile_ldsm(unsigned (&af)[4][4], unsigned (&bf)[4][2], unsigned a_addr,
                                               unsigned b_addr) {
#pragma unroll
    for (int i = 0; i < 4; ++i) ldmatrix_x4(af[i][0], af[i][1], af[i][2], af[i][3], a_addr + i * 16 * LDS);
#pragma unroll
    for (int j = 0; j < 2; ++j)
        ldmatrix_x4(bf[2 * j][0], bf[2 * j][1], bf[2 * j + 1][0], bf[2 * j + 1][1], b_addr + j * 16 * LDS);
}

// The 4 x 4 mma tiles (16 x 8 each) of a warp's 64 x 32 tile at one k32 step.
__device__ __forceinline__ void warp_tile_mma(int (&acc)[4][4][4], const unsigned (&af)[4][4],
                                              const unsigned (&bf)[4][2]) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma_s8(acc[i][j], af[i], bf[j]);
}

// Epilogue straight from registers: the warp's tile has its top-left corner at (row0,
// col0) of the row-major [M, N] output. Accumulator layout of m16n8: c0,c1 at (row g,
// cols 2t, 2t+1), c2,c3 at (row g+8, same cols); g = lane/4, t = lane%4. FUSED: 8-bit
// codes qatlab_requant(acc + bias[n]) into Y; else int32 into C.
template <bool FUSED>
__device__ __forceinline__ void warp_tile_store(const int (&acc)[4][4][4], int lane, int row0, int col0, int M,
                                                int N, int* __restrict__ C, const int* __restrict__ bias,
                                                const double* __restrict__ mult, const int* __restrict__ zp,
                                                signed char* __restrict__ Y, int qmin, int qmax) {
    const int g = lane >> 2;
    const int t = lane & 3;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int col = col0 + j * 8 + t * 2;
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
                const int row = row0 + i * 16 + g + h * 8;
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

// The CTA's whole GEMM tile: zero the accumulators, run the STAGES-deep cp.async
// pipeline over ktiles K tiles (each warp on its 64 x 32 warp tile), then store the
// [m0, m0 + BM) x [n0, n0 + BN) tile of the row-major [M, N] output with
// warp_tile_store<FUSED>. load(stage, k0) issues the copies (or plain shared stores) of
// the K tile at k0 of both operands into ring slot `stage`: A's BM rows at
// smem + stage * (BM + BN) * LDS, then B's BN rows. Every thread of the CTA calls it.
//
// Written so that ptxas sees exactly the PTX of the loop it replaced, written out in
// each kernel (same SASS, register for register): the accumulators are a local of this
// function and only the fragment-level steps are helpers, the kernels read their MmaCta
// first thing and hand over a loader lambda that captures by value ([=]). Equivalent
// shapes tried otherwise (a helper owning the k32 loop, a [&] loader, lane / warp
// computed in here) renumber PTX registers and reshuffle the register allocation.
template <bool FUSED, class LoadTile>
__device__ __forceinline__ void mma_tile_gemm(const unsigned char* smem, const MmaCta& cta, int ktiles, int M,
                                              int N, int* __restrict__ C, const int* __restrict__ bias,
                                              const double* __restrict__ mult, const int* __restrict__ zp,
                                              signed char* __restrict__ Y, int qmin, int qmax, LoadTile load) {
    const int lane = cta.lane, warp_m = cta.warp_m, warp_n = cta.warp_n, m0 = cta.m0, n0 = cta.n0;
    int acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0;

    // Prologue: fill STAGES-1 slots. Always commit (even an empty group) so that
    // wait_group<STAGES-2> below counts groups the same way on every iteration.
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ktiles) load(s, s * BK);
        cp_async_commit();
    }

    // this lane's ldmatrix rows and 16-byte halves (see warp_tile_ldsm)
    const int a_row = warp_m * 64 + (lane & 7) + ((lane >> 3) & 1) * 8;
    const int a_col = (lane >> 4) * 16;
    const int b_row = warp_n * 32 + (lane & 7) + (lane >> 4) * 8;
    const int b_col = ((lane >> 3) & 1) * 16;

    for (int kt = 0; kt < ktiles; ++kt) {
        // Tile kt has landed once at most STAGES-2 younger groups are in flight; the
        // barrier also publishes a loader's plain shared stores and guarantees every warp
        // is done with slot (kt-1) % STAGES, which the prefetch below overwrites.
        cp_async_wait<STAGES - 2>();
        __syncthreads();

        const int pf = kt + STAGES - 1;
        if (pf < ktiles) load(pf % STAGES, pf * BK);
        cp_async_commit();

        const unsigned char* As = smem + (kt % STAGES) * (BM + BN) * LDS;
        const unsigned char* Bs = As + BM * LDS;
        const unsigned a_base = smem_u32(As + a_row * LDS + a_col);
        const unsigned b_base = smem_u32(Bs + b_row * LDS + b_col);

        // Per k32 step 4 ldmatrix.x4 for A, 2 for B and 16 mma: 6 shared loads per 16
        // mma keeps the LSU well below the tensor pipe.
#pragma unroll
        for (int ks = 0; ks < BK / 32; ++ks) {
            unsigned af[4][4];
            unsigned bf[4][2];
            warp_tile_ldsm(af, bf, a_base + ks * 32, b_base + ks * 32);
            warp_tile_mma(acc, af, bf);
        }
    }
    // Drain the (empty) trailing groups before the CTA exits.
    cp_async_wait<0>();

    warp_tile_store<FUSED>(acc, lane, m0 + warp_m * 64, n0 + warp_n * 32, M, N, C, bias, mult, zp, Y, qmin, qmax);
}
