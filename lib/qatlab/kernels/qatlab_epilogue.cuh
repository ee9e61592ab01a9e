// Shared epilogue of the int8 GEMM kernels (included by both .cu files).
//
// Requantization must equal qatlab.quant.requantize(acc, M, zp, qmin, qmax, "float")
// bit for bit: that reference multiplies in float64 and rounds half to even
// (torch.round). So we use a double product with an explicit _rn multiply (no FMA
// contraction can change the rounding) and rint(), which rounds half to even in the
// default rounding mode. int32 -> double is exact, so the only rounding is the one
// product, exactly as on the CPU.
#pragma once

__device__ __forceinline__ int qatlab_requant(int acc, int bias, double mult, int zp,
                                              int qmin, int qmax) {
    // acc + bias wraps like the int32 accumulator it models; the CPU twin documents
    // that callers keep |acc + bias| < 2^31 (the IntModel checks it at convert time).
    int v = acc + bias;
    double y = rint(__dmul_rn(static_cast<double>(v), mult));
    // Clamp in double first: y can exceed the int range for large multipliers.
    y += static_cast<double>(zp);
    y = fmin(fmax(y, static_cast<double>(qmin)), static_cast<double>(qmax));
    return static_cast<int>(y);
}
