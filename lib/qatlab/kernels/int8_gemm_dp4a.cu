// int8 x int8 -> int32 GEMM with __dp4a: the plain, readable twin of int8_gemm_mma.cu.
//
//   C[M, N] = A[M, K] . B[N, K]^T   (B = weights in their [out, in] layout)
//
// One thread computes one output; a 16 x 16 block stages a 16-row slab of A and of B,
// 64 bytes (16 words of 4 packed int8) of K at a time, in shared memory so each
// global word is read once per block instead of 16 times. __dp4a(a, b, c) adds the dot
// product of the four signed bytes of a and b to c: one instruction per 4 MACs.
//
// Launch contract (checked by the Python launcher): blockDim = (16, 16),
// grid = (ceil(N/16), ceil(M/16)), K % 4 == 0 and A, B 4-byte aligned (the launcher
// zero-pads K to a multiple of 16 like for the mma kernel). Edges are predicated.
//
// Shared tiles are [16][17] words: the +1 pad puts column k of consecutive rows in
// different banks, so the B reads Bs[threadIdx.x][k] (16 different rows, same k)
// are conflict free; the A reads As[threadIdx.y][k] are a broadcast.

#include "qatlab_epilogue.cuh"

#define TILE 16

template <bool FUSED>
__device__ __forceinline__ void gemm_dp4a(const signed char* __restrict__ A, const signed char* __restrict__ B,
                                          int* __restrict__ C, const int* __restrict__ bias,
                                          const double* __restrict__ mult, const int* __restrict__ zp,
                                          signed char* __restrict__ Y, int M, int N, int K, int qmin, int qmax) {
    __shared__ int As[TILE][TILE + 1];
    __shared__ int Bs[TILE][TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int row = blockIdx.y * TILE + ty;  // output row (M)
    const int col = blockIdx.x * TILE + tx;  // output column (N)
    const int kw = K / 4;                    // K in 32-bit words
    const int* A32 = reinterpret_cast<const int*>(A);
    const int* B32 = reinterpret_cast<const int*>(B);

    int acc = 0;
    for (int w0 = 0; w0 < kw; w0 += TILE) {
        // Each thread fetches one word of A and one of B; zeros outside the matrix.
        const int arow = blockIdx.y * TILE + ty, brow = blockIdx.x * TILE + ty;
        As[ty][tx] = (arow < M && w0 + tx < kw) ? A32[static_cast<long long>(arow) * kw + w0 + tx] : 0;
        Bs[ty][tx] = (brow < N && w0 + tx < kw) ? B32[static_cast<long long>(brow) * kw + w0 + tx] : 0;
        __syncthreads();
#pragma unroll
        for (int k = 0; k < TILE; ++k) acc = __dp4a(As[ty][k], Bs[tx][k], acc);
        __syncthreads();
    }
    if (row >= M || col >= N) return;
    const long long off = static_cast<long long>(row) * N + col;
    if (FUSED)
        Y[off] = static_cast<signed char>(qatlab_requant(acc, bias[col], mult[col], zp[col], qmin, qmax));
    else
        C[off] = acc;
}

extern "C" __global__ void __launch_bounds__(TILE * TILE)
int8_gemm_dp4a_s32(const signed char* __restrict__ A, const signed char* __restrict__ B, int* __restrict__ C,
                   int M, int N, int K) {
    gemm_dp4a<false>(A, B, C, nullptr, nullptr, nullptr, nullptr, M, N, K, 0, 0);
}

extern "C" __global__ void __launch_bounds__(TILE * TILE)
int8_gemm_dp4a_requant(const signed char* __restrict__ A, const signed char* __restrict__ B,
                       const int* __restrict__ bias, const double* __restrict__ mult, const int* __restrict__ zp,
                       signed char* __restrict__ Y, int M, int N, int K, int qmin, int qmax) {
    gemm_dp4a<true>(A, B, nullptr, bias, mult, zp, Y, M, N, K, qmin, qmax);
}
