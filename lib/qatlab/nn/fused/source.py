"""The C++ source of the fused fake-quant kernels (built by :mod:`.build`, bound by :mod:`.ops`).

Kept as a string so that every install of the package carries it, whatever the
packaging rules for data files. The kernels use no torch headers: they take raw
float32 pointers through ctypes, which keeps the build to a second or two.

Arithmetic contract (the reference's, element for element):

* ``s`` is the scale as given, or ``max(|raw|, floor)`` for a learned one;
  ``inv = 1.0f / s`` in float32; ``z = nearbyint(clamp(zp, qmin, qmax))``.
* ``t = nearbyint(x · inv)`` (round half to even, the default rounding mode),
  ``q = clamp(t + z, qmin, qmax)``, ``y = (q − z) · s`` (:mod:`qatlab.quant.affine`'s
  formula and torch's fake-quant kernels', down to the sign of a zero); NaN stays NaN.
* the in-range mask is ``qmin ≤ t + z ≤ qmax`` (false for NaN, written with ``&`` so the
  loop vectorizes); ``dx = dy · mask`` as a float multiply, so the signs of zeros and
  NaNs are those of the torch-op path's ``dy * mask``.
* LSQ's gradients are sums of per-element terms, accumulated in double per chunk
  and added in chunk order: the result does not depend on the thread count.
* observed quantizers (``qatlab_fq_observe_forward``): per-row min/max of the clamped
  values with NaN propagating (torch's amin/amax), the running state in float32
  (``torch.minimum``/``maximum``, or ``keep·old + take·new`` with both factors rounded to
  float32 as torch rounds a Python scalar), then ``qparams_from_range`` in double: the
  range widened to contain 0, ``scale = float32(max(width / div, 2^-100))`` (1 for a zero
  width), ``zp = clamp(qmin − nearbyint(lo / scale), qmin, qmax)``; a NaN or infinite
  range returns 1 before any qparams are written.

* the MSE range search (``qatlab_mse_search``): candidate ``k`` of ``n`` is the range
  ``(lo·f, hi·f)`` with ``f = k/n`` rounded to float32 and the product taken in float32
  (torch's float32 tensor times a Python scalar), its qparams by ``qparams_from_range``'s
  arithmetic above; the error term ``double(y − x)²`` is exact (a float32 difference
  squared fits a double), so only the order of the double sums differs from torch's. A
  long row first bounds every candidate's error from one histogram pass and evaluates
  only those whose lower bound does not exceed the least upper bound (the bounds hold
  for any summation order), so it chooses what the full search chooses, bit for bit.

* BatchNorm on batch statistics fused with the quantizer after it (``qatlab_bn_*``):
  statistics per channel from shifted sums (float blocks, double totals); the BN output
  ``z = (x − K)·a + b`` in float32 with ``K`` the channel's first value, ``a = γ·invstd``,
  ``b = β − (mean − K)·a`` rounded to float32;
  an observed quantizer's range from each channel's least and largest ``x`` mapped
  through ``z`` (monotone rounding makes them the least and largest ``z``); the output
  ``fq(clip(z))`` as above; a NaN or infinite statistic or range returns 1 before any
  state is written.

``-ffp-contract=off`` keeps the compiler from fusing a multiply and an add into one
rounding, which would change values the reference computes in two.
"""

from __future__ import annotations

SOURCE = r"""
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

typedef int64_t i64;

// Each (outer, channel) segment of `inner` contiguous values is cut into chunks of at
// most CHUNK values; chunks are the unit of parallel work and of partial sums.
static const i64 CHUNK = 32768;

struct Grid {
    i64 outer, channels, inner, per_seg, nchunks;
    Grid(i64 o, i64 c, i64 n) : outer(o), channels(c), inner(n) {
        per_seg = n > 0 ? (n + CHUNK - 1) / CHUNK : 0;
        nchunks = o * c * per_seg;
    }
    inline void chunk(i64 k, i64& seg, i64& begin, i64& end) const {
        seg = k / per_seg;
        i64 j = k - seg * per_seg;
        begin = seg * inner + j * CHUNK;
        i64 stop = seg * inner + inner;
        end = begin + CHUNK < stop ? begin + CHUNK : stop;
    }
    inline i64 channel_of(i64 seg) const { return seg % channels; }
    // Threads only pay off past a few chunks' worth of values (waking them costs µs).
    inline bool parallel() const { return nchunks > 1 && outer * channels * inner >= 2 * CHUNK; }
};

struct Params {
    std::vector<float> s, inv, z;
};

// floor > 0: s = max(|raw|, floor) (a learned scale kept positive); floor <= 0: s = raw.
static void make_params(Params& p, i64 channels, const float* scale, const float* zp, int zp_per_channel,
                        float qmin, float qmax, float floor) {
    p.s.resize(channels); p.inv.resize(channels); p.z.resize(channels);
    for (i64 c = 0; c < channels; ++c) {
        float s = scale[c];
        if (floor > 0.0f) {
            s = std::fabs(s);
            if (s < floor) s = floor;
        }
        float z = zp ? zp[zp_per_channel ? c : 0] : 0.0f;
        z = z < qmin ? qmin : (z > qmax ? qmax : z);
        z = std::nearbyint(z);
        p.s[c] = s;
        p.inv[c] = 1.0f / s;
        p.z[c] = z;
    }
}

// A clamp applied before the quantizer (a ReLU6 or clamp fused into the layer):
// v = clamp(x, clo, chi), NaN kept; its gradient mask is clo <= x <= chi, as torch's
// clamp backward (where(mask, grad, 0)). No clamp: clo = -inf, chi = +inf.
static inline float clip(float x, float clo, float chi) { return x < clo ? clo : (x > chi ? chi : x); }
// Whether (clo, chi) clamps at all (an open clamp is (-inf, +inf)).
static inline bool has_clip(float clo, float chi) {
    return !(std::isinf(clo) && clo < 0.0f && std::isinf(chi) && chi > 0.0f);
}

// keep ? v : +0.0f, as torch's where(mask, grad, 0), written as a bit mask: the ternary
// on a stored value is left as a branch by the compiler in some loops (10x slower).
static inline float keep_or_zero(int keep, float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    bits &= (uint32_t)(-keep);
    float out;
    std::memcpy(&out, &bits, sizeof out);
    return out;
}

// Partial sums are taken in float over blocks of BLOCK values (vectorizable), then
// added in double: the rounding error stays that of a short float sum.
static const i64 BLOCK = 256;

// FOLD: a weight quantized in a BN-folded frame (QAT with live BN statistics): u = x·f with
// f the value's fold factor, y = fq(u) / f, each step rounded in float32 as the torch ops
// ``(x * f)``, the quantizer, ``/ f`` round it.
template <bool CLIP, bool FOLD = false>
static void fq_forward_chunk(const float* x, float* y, i64 b, i64 e, float s, float inv, float z,
                             float qmin, float qmax, float clo, float chi, const float* fold = nullptr) {
    #pragma omp simd
    for (i64 i = b; i < e; ++i) {
        const float u = FOLD ? x[i] * fold[i] : x[i];
        float v = CLIP ? clip(u, clo, chi) : u;
        float q = std::nearbyint(v * inv) + z;
        q = q < qmin ? qmin : (q > qmax ? qmax : q);
        y[i] = FOLD ? ((q - z) * s) / fold[i] : (q - z) * s;
    }
}

extern "C" {

int qatlab_fused_abi(void) { return 11; }

void qatlab_fq_forward(const float* x, float* y, i64 outer, i64 channels, i64 inner,
                       const float* scale, const float* zp, int zp_per_channel,
                       float qmin, float qmax, float floor, float clo, float chi, const float* fold, int nthreads) {
    Params p;
    make_params(p, channels, scale, zp, zp_per_channel, qmin, qmax, floor);
    Grid g(outer, channels, inner);
    const bool clipped = has_clip(clo, chi);
    #pragma omp parallel for schedule(static) num_threads(nthreads) if(nthreads > 1 && g.parallel())
    for (i64 k = 0; k < g.nchunks; ++k) {
        i64 seg, b, e;
        g.chunk(k, seg, b, e);
        i64 c = g.channel_of(seg);
        const float s = p.s[c], inv = p.inv[c], z = p.z[c];
        if (fold) fq_forward_chunk<true, true>(x, y, b, e, s, inv, z, qmin, qmax, clo, chi, fold);
        else if (clipped) fq_forward_chunk<true>(x, y, b, e, s, inv, z, qmin, qmax, clo, chi);
        else fq_forward_chunk<false>(x, y, b, e, s, inv, z, qmin, qmax, clo, chi);
    }
}

}  // extern "C"

// One chunk of the backward pass. dv = dy · mask (the quantizer's input gradient),
// dx = dv where clo <= x <= chi, else 0. SUMS: out[0] = Σ(dy·y − dv·v) (the LSQ step's
// term: dy·(y − v) in range, dy·y outside) and out[1] = Σ(dy − dv) (dy outside the
// range), each one accumulator, so no two large sums cancel. CLIP: the clamp is on;
// templates keep the common cases free of the work they do not need.
template <bool CLIP, bool SUMS>
static void fq_backward_chunk(const float* x, const float* dy, float* dx, i64 b, i64 e, float s, float inv, float z,
                              float qmin, float qmax, float clo, float chi, double* out) {
    double a_s = 0.0, a_z = 0.0;
    for (i64 b0 = b; b0 < e; b0 += BLOCK) {
        const i64 e0 = b0 + BLOCK < e ? b0 + BLOCK : e;
        float f_s = 0.0f, f_z = 0.0f;
        #pragma omp simd reduction(+ : f_s, f_z)
        for (i64 i = b0; i < e0; ++i) {
            float xv = x[i], gv = dy[i];
            float v = CLIP ? clip(xv, clo, chi) : xv;
            float t = std::nearbyint(v * inv) + z;
            float dv = gv * (float)((t >= qmin) & (t <= qmax));
            dx[i] = CLIP ? keep_or_zero((xv >= clo) & (xv <= chi), dv) : dv;
            if (SUMS) {
                float q = t < qmin ? qmin : (t > qmax ? qmax : t);
                f_s += gv * ((q - z) * s) - dv * v;
                f_z += gv - dv;
            }
        }
        a_s += f_s;
        a_z += f_z;
    }
    if (SUMS) { out[0] = a_s; out[1] = a_z; }
}

// The backward of fq_forward_chunk<.., FOLD>, as autograd takes the torch ops back: dq = dy / f,
// du = dq · mask (and the clamp's), dx = du · f, and per value the fold factor's gradient
// du·x − dy·((y_q / f) / f) (the product's and the quotient's terms; y_q = fq(u)). The
// LSQ sums are those of the quantizer at u with gradient dq.
static void fq_backward_fold_chunk(const float* x, const float* fold, const float* dy, float* dx, float* dfold, i64 b, i64 e,
                                   float s, float inv, float z, float qmin, float qmax, bool clipped, float clo, float chi,
                                   double* out) {
    double a_s = 0.0, a_z = 0.0;
    for (i64 i = b; i < e; ++i) {
        const float xv = x[i], f = fold[i], g0 = dy[i];
        const float u = xv * f, gv = g0 / f;
        const float v = clip(u, clo, chi);
        const float t = std::nearbyint(v * inv) + z;
        const float dv = gv * (float)((t >= qmin) & (t <= qmax));
        const float du = clipped ? keep_or_zero((u >= clo) & (u <= chi), dv) : dv;
        const float q = t < qmin ? qmin : (t > qmax ? qmax : t);
        const float yq = (q - z) * s;
        dx[i] = du * f;
        if (dfold) dfold[i] = du * xv + (-g0 * ((yq / f) / f));
        a_s += (double)(gv * yq - dv * v);
        a_z += (double)(gv - dv);
    }
    if (out) { out[0] = a_s; out[1] = a_z; }
}

// LSQ's step and zero-point gradients of each row from its sums tot[2r] = Σ(dy·y − dv·v) and
// tot[2r + 1] = Σ(dy − dv): ds = g·Σ/s and dz = −g·s·Σ, then through s = max(|raw|, floor).
static void lsq_grads(i64 rows, const double* tot, const Params& p, const float* scale, float floor, double grad_factor,
                      int zp_per_channel, float* dscale, float* dzp) {
    for (i64 c = 0; c < rows; ++c) {
        const double* t = &tot[c * 2];
        const double s = p.s[c];
        if (dscale) {
            double d = grad_factor * t[0] / s;
            if (floor > 0.0f) {
                // d|raw|/draw = sign(raw) (0 at 0); the floor passes no gradient below it.
                float raw = scale[c];
                double sg = raw > 0.0f ? 1.0 : (raw < 0.0f ? -1.0 : 0.0);
                d = std::fabs(raw) >= floor ? d * sg : 0.0;
            }
            dscale[c] = (float)d;
        }
        if (dzp) dzp[zp_per_channel ? c : 0] = (float)(-grad_factor * s * t[1]);
    }
}

extern "C" {

// With dscale / dzp, per channel: ds = g·Σ(dy·y − dv·v)/s and dz = −g·s·Σ(dy − dv),
// then through s = max(|raw|, floor) to the raw scale.
void qatlab_fq_backward(const float* x, const float* dy, float* dx, i64 outer, i64 channels, i64 inner,
                        const float* scale, const float* zp, int zp_per_channel,
                        float qmin, float qmax, float floor, float clo, float chi, const float* fold, double grad_factor,
                        float* dscale, float* dzp, float* dfold, int nthreads) {
    Params p;
    make_params(p, channels, scale, zp, zp_per_channel, qmin, qmax, floor);
    Grid g(outer, channels, inner);
    const bool sums = dscale != nullptr || dzp != nullptr;
    const bool clipped = has_clip(clo, chi);
    std::vector<double> part(sums ? g.nchunks * 2 : 0);
    #pragma omp parallel for schedule(static) num_threads(nthreads) if(nthreads > 1 && g.parallel())
    for (i64 k = 0; k < g.nchunks; ++k) {
        i64 seg, b, e;
        g.chunk(k, seg, b, e);
        i64 c = g.channel_of(seg);
        const float s = p.s[c], inv = p.inv[c], z = p.z[c];
        double* out = sums ? &part[k * 2] : nullptr;
        if (fold) fq_backward_fold_chunk(x, fold, dy, dx, dfold, b, e, s, inv, z, qmin, qmax, clipped, clo, chi, out);
        else if (clipped && sums) fq_backward_chunk<true, true>(x, dy, dx, b, e, s, inv, z, qmin, qmax, clo, chi, out);
        else if (clipped) fq_backward_chunk<true, false>(x, dy, dx, b, e, s, inv, z, qmin, qmax, clo, chi, out);
        else if (sums) fq_backward_chunk<false, true>(x, dy, dx, b, e, s, inv, z, qmin, qmax, clo, chi, out);
        else fq_backward_chunk<false, false>(x, dy, dx, b, e, s, inv, z, qmin, qmax, clo, chi, out);
    }
    if (!sums) return;
    std::vector<double> tot(channels * 2, 0.0);
    for (i64 k = 0; k < g.nchunks; ++k) {
        i64 seg = k / g.per_seg;
        double* t = &tot[g.channel_of(seg) * 2];
        t[0] += part[k * 2];
        t[1] += part[k * 2 + 1];
    }
    lsq_grads(channels, tot.data(), p, scale, floor, grad_factor, zp_per_channel, dscale, dzp);
}

// PACT: y = min(clamp(nearbyint(v·inv), 0, ∞), top)·s with s = max(α/qmax, 1e-12),
// top = clamp(nearbyint(α·inv), 0, qmax): quantizing clamp(v, 0, α), as the reference.
static inline void pact_params(float alpha, float qmax, float& s, float& inv, float& top) {
    s = alpha / qmax;
    if (s < 1e-12f) s = 1e-12f;
    inv = 1.0f / s;
    top = std::nearbyint(alpha * inv);
    top = top < 0.0f ? 0.0f : (top > qmax ? qmax : top);
}

void qatlab_pact_forward(const float* x, float* y, i64 n, const float* alpha, float qmax,
                         float clo, float chi, int nthreads) {
    float s, inv, top;
    pact_params(alpha[0], qmax, s, inv, top);
    Grid g(1, 1, n);
    #pragma omp parallel for schedule(static) num_threads(nthreads) if(nthreads > 1 && g.parallel())
    for (i64 k = 0; k < g.nchunks; ++k) {
        i64 seg, b, e;
        g.chunk(k, seg, b, e);
        #pragma omp simd
        for (i64 i = b; i < e; ++i) {
            // + 0: a rounded -0 becomes +0, as in torch's kernel (zero point 0).
            float t = std::nearbyint(clip(x[i], clo, chi) * inv) + 0.0f;
            t = t < 0.0f ? 0.0f : t;
            t = t > top ? top : t;
            y[i] = t * s;
        }
    }
}

// dv = dy where 0 < v < α (else 0), dx = dv where clo <= x <= chi, dα = Σ dy where v ≥ α.
void qatlab_pact_backward(const float* x, const float* dy, float* dx, i64 n, const float* alpha_p,
                          float clo, float chi, float* dalpha, int nthreads) {
    const float alpha = alpha_p[0];
    Grid g(1, 1, n);
    std::vector<double> part(g.nchunks, 0.0);
    #pragma omp parallel for schedule(static) num_threads(nthreads) if(nthreads > 1 && g.parallel())
    for (i64 k = 0; k < g.nchunks; ++k) {
        i64 seg, b, e;
        g.chunk(k, seg, b, e);
        double acc = 0.0;
        for (i64 b0 = b; b0 < e; b0 += BLOCK) {
            const i64 e0 = b0 + BLOCK < e ? b0 + BLOCK : e;
            float f = 0.0f;
            #pragma omp simd reduction(+ : f)
            for (i64 i = b0; i < e0; ++i) {
                float xv = x[i], gv = dy[i];
                float v = clip(xv, clo, chi);
                int above = v >= alpha;
                float dv = keep_or_zero(!(above | (v <= 0.0f)), gv);
                dx[i] = keep_or_zero((xv >= clo) & (xv <= chi), dv);
                f += keep_or_zero(above, gv);
            }
            acc += f;
        }
        part[k] = acc;
    }
    double tot = 0.0;
    for (i64 k = 0; k < g.nchunks; ++k) tot += part[k];
    dalpha[0] = (float)tot;
}

}  // extern "C"

// ---- Observed quantizers: range, qparams and fake quantization in one call ----------
//
// The reference is FakeQuant._observe + quant.qparams_from_range + the fixed quantizer:
// per row (channel) lo/hi = amin/amax of the (clamped) values, NaN propagating; a search
// estimator between its searches scales the largest magnitude by the last search's
// fractions; then the running state (replace, running min/max, or EMA in float32 with the
// decay rounded to float32 as torch rounds a Python scalar); then the qparams in double
// with the scale rounded to float32 and the zero point fitted to that float32 scale.

// FOLD: of the folded values x·f (see fq_forward_chunk).
template <bool CLIP, bool FOLD = false>
static void minmax_chunk(const float* x, i64 b, i64 e, float clo, float chi, float* out_lo, float* out_hi, int* out_nan,
                         const float* fold = nullptr) {
    float lo = INFINITY, hi = -INFINITY;
    int bad = 0;
    #pragma omp simd reduction(min : lo) reduction(max : hi) reduction(| : bad)
    for (i64 i = b; i < e; ++i) {
        const float u = FOLD ? x[i] * fold[i] : x[i];
        float v = CLIP ? clip(u, clo, chi) : u;
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
        bad |= (v != v);
    }
    *out_lo = lo; *out_hi = hi; *out_nan = bad;
}

// torch.minimum / torch.maximum: NaN if either is NaN.
static inline float nan_min(float a, float b) { return (a != a || b != b) ? NAN : (a < b ? a : b); }
static inline float nan_max(float a, float b) { return (a != a || b != b) ? NAN : (a > b ? a : b); }

// scheme: 0 asymmetric, 1 symmetric signed, 2 symmetric unsigned. Returns 1 when a range
// is NaN or infinite (qparams_from_range's ValueError), before writing any qparams.
static int qparams_rows(i64 rows, const float* lo, const float* hi, double qmin, double qmax, double div,
                        int scheme, int zero_code, float* scale, int32_t* zp) {
    for (i64 c = 0; c < rows; ++c)
        if (!std::isfinite(lo[c]) || !std::isfinite(hi[c])) return 1;
    const double scale_min = std::ldexp(1.0, -100);
    for (i64 c = 0; c < rows; ++c) {
        double l = (double)lo[c], h = (double)hi[c];
        l = l > 0.0 ? 0.0 : l;
        h = h < 0.0 ? 0.0 : h;
        double w = scheme == 0 ? h - l : (scheme == 1 ? (-l > h ? -l : h) : h);
        const bool ok = w > 0.0;
        double sd = w / div;
        sd = sd < scale_min ? scale_min : sd;
        const float s = ok ? (float)sd : 1.0f;
        scale[c] = s;
        if (scheme != 0) { zp[c] = 0; continue; }
        if (!ok) { zp[c] = zero_code; continue; }
        double t = qmin - std::nearbyint(l / (double)s);
        t = t < qmin ? qmin : (t > qmax ? qmax : t);
        zp[c] = (int32_t)t;
    }
    return 0;
}

// The batch range per row (NaN where bnan) met with the state, then the qparams: see
// qatlab_fq_observe_forward. Returns 1 (no qparams written) for a NaN or infinite range.
static int observe_rows(i64 rows, const float* blo, const float* bhi, const int* bnan, const float* frac, int mode,
                        const float* old_lo, const float* old_hi, float keep, float take, float* lo, float* hi,
                        double qmin, double qmax, double div, int scheme, int zero_code, float* scale, int32_t* zp) {
    for (i64 c = 0; c < rows; ++c) {
        float l = bnan[c] ? NAN : blo[c], h = bnan[c] ? NAN : bhi[c];
        if (frac) {
            const float mag = nan_max(std::fabs(l), std::fabs(h));
            l = frac[c] * mag;
            h = frac[rows + c] * mag;
        }
        if (mode == 1) {
            l = nan_min(old_lo[c], l);
            h = nan_max(old_hi[c], h);
        } else if (mode == 2) {
            l = keep * old_lo[c] + take * l;
            h = keep * old_hi[c] + take * h;
        }
        lo[c] = l;
        hi[c] = h;
    }
    return qparams_rows(rows, lo, hi, qmin, qmax, div, scheme, zero_code, scale, zp);
}

extern "C" {

// x viewed as [outer, channels, inner]; one range per channel. frac: [2, channels] or
// null. mode: 0 the batch range replaces the state, 1 running min/max, 2 EMA
// (keep·old + take·batch). lo/hi receive the new state, scale/zp the qparams, zpf the
// zero point as float (for the backward), y the fake-quantized values (of clamp(x)).
int qatlab_fq_observe_forward(const float* x, float* y, i64 outer, i64 channels, i64 inner,
                              float clo, float chi, const float* fold, const float* frac, int mode,
                              const float* old_lo, const float* old_hi, float keep, float take,
                              float* lo, float* hi, double qmin, double qmax, double div, int scheme,
                              int zero_code, float* scale, int32_t* zp, float* zpf, int nthreads) {
    Grid g(outer, channels, inner);
    const bool clipped = has_clip(clo, chi);
    std::vector<float> part_lo(g.nchunks), part_hi(g.nchunks);
    std::vector<int> part_nan(g.nchunks);
    #pragma omp parallel for schedule(static) num_threads(nthreads) if(nthreads > 1 && g.parallel())
    for (i64 k = 0; k < g.nchunks; ++k) {
        i64 seg, b, e;
        g.chunk(k, seg, b, e);
        if (fold) minmax_chunk<true, true>(x, b, e, clo, chi, &part_lo[k], &part_hi[k], &part_nan[k], fold);
        else if (clipped) minmax_chunk<true>(x, b, e, clo, chi, &part_lo[k], &part_hi[k], &part_nan[k]);
        else minmax_chunk<false>(x, b, e, clo, chi, &part_lo[k], &part_hi[k], &part_nan[k]);
    }
    std::vector<float> blo(channels, INFINITY), bhi(channels, -INFINITY);
    std::vector<int> bnan(channels, 0);
    for (i64 k = 0; k < g.nchunks; ++k) {
        const i64 c = g.channel_of(k / g.per_seg);
        blo[c] = part_lo[k] < blo[c] ? part_lo[k] : blo[c];
        bhi[c] = part_hi[k] > bhi[c] ? part_hi[k] : bhi[c];
        bnan[c] |= part_nan[k];
    }
    if (observe_rows(channels, blo.data(), bhi.data(), bnan.data(), frac, mode, old_lo, old_hi, keep, take, lo, hi,
                     qmin, qmax, div, scheme, zero_code, scale, zp)) return 1;
    std::vector<float> inv(channels);
    for (i64 c = 0; c < channels; ++c) {
        zpf[c] = (float)zp[c];
        inv[c] = 1.0f / scale[c];
    }
    const float fqmin = (float)qmin, fqmax = (float)qmax;
    #pragma omp parallel for schedule(static) num_threads(nthreads) if(nthreads > 1 && g.parallel())
    for (i64 k = 0; k < g.nchunks; ++k) {
        i64 seg, b, e;
        g.chunk(k, seg, b, e);
        const i64 c = g.channel_of(seg);
        if (fold) fq_forward_chunk<true, true>(x, y, b, e, scale[c], inv[c], zpf[c], fqmin, fqmax, clo, chi, fold);
        else if (clipped) fq_forward_chunk<true>(x, y, b, e, scale[c], inv[c], zpf[c], fqmin, fqmax, clo, chi);
        else fq_forward_chunk<false>(x, y, b, e, scale[c], inv[c], zpf[c], fqmin, fqmax, clo, chi);
    }
    return 0;
}

// The qparams arithmetic alone, so that it can be held to qparams_from_range on ranges
// that no tensor's min/max would produce (huge, tiny, zero-width).
int qatlab_qparams_from_range(i64 rows, const float* lo, const float* hi, double qmin, double qmax, double div,
                              int scheme, int zero_code, float* scale, int32_t* zp) {
    return qparams_rows(rows, lo, hi, qmin, qmax, div, scheme, zero_code, scale, zp);
}

}  // extern "C"

// ---- MSE range search: every candidate range in one pass over the data ----------------
//
// The reference (quant.estimators.mse) runs one fake-quantize pass per candidate. Here each
// block of a row stays in L1 while all candidates sweep it; the per-(chunk, candidate) sums
// are added in chunk order afterwards, so the result does not depend on the thread count.

static const i64 MSE_BLOCK = 1024;
static const int MSE_LANES = 16;

// One value's fake quantization under one candidate. The clamp is written as two one-sided
// selects (a max and a min instruction): the values are finite here (their row's range
// is), so this equals the nested form that keeps a NaN, at fewer instructions.
static inline float fq_value(float xv, float s, float inv, float z, float qmin, float qmax) {
    float q = std::nearbyint(xv * inv) + z;
    q = q < qmin ? qmin : q;
    q = q > qmax ? qmax : q;
    return (q - z) * s;
}

// One value's squared error under one candidate: exact in double (a float32 difference
// squared needs at most 48 significant bits).
static inline double mse_term(float xv, float s, float inv, float z, float qmin, float qmax) {
    const double d = (double)(fq_value(xv, s, inv, z, qmin, qmax) - xv);
    return d * d;
}

// The candidates sel[0..nsel) only (each one's sums are independent of the others').
static void mse_chunk(const float* x, i64 b, i64 e, const int* sel, int nsel, const float* s, const float* inv,
                      const float* z, float qmin, float qmax, double* out) {
    for (int t = 0; t < nsel; ++t) out[sel[t]] = 0.0;
    for (i64 b0 = b; b0 < e; b0 += MSE_BLOCK) {
        const i64 e0 = b0 + MSE_BLOCK < e ? b0 + MSE_BLOCK : e;
        const i64 lanes_end = b0 + (e0 - b0) / MSE_LANES * MSE_LANES;
        for (int t = 0; t < nsel; ++t) {
            const int j = sel[t];
            const float sj = s[j], ij = inv[j], zj = z[j];
            // MSE_LANES independent accumulators: one would chain every add on the last
            // one's latency (the loop's bottleneck); the lanes are summed in a fixed order.
            double lane[MSE_LANES] = {0.0};
            for (i64 i0 = b0; i0 < lanes_end; i0 += MSE_LANES) {
                #pragma omp simd
                for (int l = 0; l < MSE_LANES; ++l) lane[l] += mse_term(x[i0 + l], sj, ij, zj, qmin, qmax);
            }
            double acc = 0.0;
            for (int l = 0; l < MSE_LANES; ++l) acc += lane[l];
            for (i64 i = lanes_end; i < e0; ++i) acc += mse_term(x[i], sj, ij, zj, qmin, qmax);
            out[j] += acc;
        }
    }
}

// ---- Pruning the candidates of a long row: bounds from one histogram pass ---------------
//
// The row's values go into bins over [lo0, hi0]; each bin keeps its count, its
// least and largest value, and the first two moments of (x − c) about its left edge c.
// Fake quantization is monotone, so a candidate that maps a bin's least and largest value
// to the same grid value y maps every value of the bin to y, and the bin's error Σ(y − x)²
// follows from the moments, up to a rounding bound. A bin across a rounding boundary adds
// between 0 and count·max((y_max − least)², (largest − y_min)²). The bounds also cover
// each term's float32 subtraction and the summation order of the full search. A
// candidate whose lower bound exceeds the least upper bound cannot be the least error;
// the others are evaluated by the same sums as in the full search, so the chosen range,
// its error and the first-on-ties rule are the full search's bit for bit.

// Bins per row: one per PRUNE_VALUES_PER_BIN values, within [PRUNE_MIN_BINS, PRUNE_MAX_BINS]. More bins
// give tighter bounds (fewer candidates left) and cost more per candidate to bound.
static const i64 PRUNE_VALUES_PER_BIN = 32, PRUNE_MIN_BINS = 256, PRUNE_MAX_BINS = 4096;

struct RowBins {
    std::vector<double> c, sd, sdd, cnt;
    std::vector<float> mn, mx;
};

// Bins of x[0..n) over [lo, hi] (lo < hi, values finite), empty bins dropped. A value outside
// [lo, hi] joins an end bin: the bounds use each bin's actual least and largest value, so
// any assignment of values to bins gives sound bounds.
static void fill_bins(const float* x, i64 n, float lo, float hi, RowBins& out) {
    i64 nbins = n / PRUNE_VALUES_PER_BIN;
    nbins = nbins < PRUNE_MIN_BINS ? PRUNE_MIN_BINS : (nbins > PRUNE_MAX_BINS ? PRUNE_MAX_BINS : nbins);
    const double dlo = lo, step = ((double)hi - dlo) / (double)nbins, k = (double)nbins / ((double)hi - dlo);
    std::vector<i64> cnt(nbins, 0);
    std::vector<double> sd(nbins, 0.0), sdd(nbins, 0.0);
    std::vector<float> mn(nbins, INFINITY), mx(nbins, -INFINITY);
    for (i64 i = 0; i < n; ++i) {
        const float xv = x[i];
        i64 b = (i64)(((double)xv - dlo) * k);
        b = b < 0 ? 0 : (b >= nbins ? nbins - 1 : b);
        const double d = (double)xv - (dlo + (double)b * step);
        cnt[b] += 1;
        sd[b] += d;
        sdd[b] += d * d;
        mn[b] = xv < mn[b] ? xv : mn[b];
        mx[b] = xv > mx[b] ? xv : mx[b];
    }
    out = RowBins();
    for (i64 b = 0; b < nbins; ++b) {
        if (!cnt[b]) continue;
        out.c.push_back(dlo + (double)b * step);
        out.cnt.push_back((double)cnt[b]);
        out.sd.push_back(sd[b]);
        out.sdd.push_back(sdd[b]);
        out.mn.push_back(mn[b]);
        out.mx.push_back(mx[b]);
    }
}

static inline double dmax(double a, double b) { return a > b ? a : b; }

// Lower and upper bound of the exact sum of one candidate's error terms over the bins.
static void candidate_bounds(const RowBins& h, float s, float inv, float z, float qmin, float qmax, double& lb, double& ub) {
    const double eps = 0x1p-53;
    double l = 0.0, u = 0.0;
    for (size_t b = 0; b < h.c.size(); ++b) {
        const float lo_v = h.mn[b], hi_v = h.mx[b];
        const float ya = fq_value(lo_v, s, inv, z, qmin, qmax), yb = fq_value(hi_v, s, inv, z, qmin, qmax);
        const double n = h.cnt[b];
        if (ya == yb) {
            // One grid value y for the whole bin: Σ(y − x)² = n·w² − 2w·Σd + Σd², w = y − c, d = x − c.
            const double c = h.c[b], w = (double)ya - c;
            const double dm = dmax(std::fabs((double)lo_v - c), std::fabs((double)hi_v - c));
            const double e = n * w * w - 2.0 * w * h.sd[b] + h.sdd[b];
            // Rounding of d, w, the moments' sums and this formula: under γ(n + 8) of the magnitudes.
            const double big = std::fabs(w) + dm;
            const double slack = 2.0 * (n + 8.0) * eps * (n * big * big + h.sdd[b]);
            l += dmax(e - slack, 0.0);
            u += e + slack;
        } else {
            const double lo_gap = (double)yb - (double)lo_v, hi_gap = (double)hi_v - (double)ya;
            u += n * dmax(lo_gap * lo_gap, hi_gap * hi_gap);
        }
    }
    // Each term is fl32(y − x)² (within 2^-22 of (y − x)²); the bins' sum adds ≤ 2^-40.
    lb = l * (1.0 - 0x1p-21);
    ub = u * (1.0 + 0x1p-21);
}

// The candidates of row x[0..n) that can be its least error, ascending, into sel.
static void surviving_candidates(const float* x, i64 n, float lo0, float hi0, int grid, const float* s, const float* inv,
                                 const float* z, float qmin, float qmax, std::vector<int>& sel) {
    sel.clear();
    if (!(hi0 > lo0)) {  // one value throughout: nothing to bin
        for (int j = 0; j < grid; ++j) sel.push_back(j);
        return;
    }
    RowBins h;
    fill_bins(x, n, lo0, hi0, h);
    std::vector<double> lb(grid), ub(grid);
    double best_ub = INFINITY;
    for (int j = 0; j < grid; ++j) {
        candidate_bounds(h, s[j], inv[j], z[j], qmin, qmax, lb[j], ub[j]);
        best_ub = ub[j] < best_ub ? ub[j] : best_ub;
    }
    // Any summation order of n terms stays within γ(n) of their exact sum.
    const double g = (double)n * 0x1p-53;
    const double gamma = g / (1.0 - g);
    const double bar = best_ub * (1.0 + gamma);
    for (int j = 0; j < grid; ++j)
        if (!(lb[j] * (1.0 - gamma) > bar)) sel.push_back(j);
}

extern "C" {

// x: [rows, n] row-major. lo0/hi0: each row's min/max. Candidate j (0-based) of row r is the
// range (lo0[r]·f, hi0[r]·f), f = float32((j + 1) / grid). Per row, the candidate of least
// squared error wins, the first on ties; a row whose every error is NaN or infinite keeps
// (lo0, hi0). err (nullable) receives the winners' errors, errs (nullable, [rows, grid])
// every candidate's (and then every candidate is evaluated). Rows of at least min_prune
// values (0: none) evaluate only the candidates that their bounds leave; evaluated
// (nullable) receives how many per row. Returns 1 (writing nothing) when a lo0/hi0 is NaN
// or infinite.
int qatlab_mse_search(const float* x, i64 rows, i64 n, const float* lo0, const float* hi0, int grid,
                      double qmin, double qmax, double div, int scheme, int zero_code,
                      float* best_lo, float* best_hi, double* err, double* errs, i64 min_prune,
                      int32_t* evaluated, int nthreads) {
    for (i64 r = 0; r < rows; ++r)
        if (!std::isfinite(lo0[r]) || !std::isfinite(hi0[r])) return 1;
    const i64 cands = rows * (i64)grid;
    std::vector<float> clo(cands), chi(cands), cs(cands), cinv(cands), cz(cands);
    std::vector<int32_t> czp(cands);
    for (i64 r = 0; r < rows; ++r)
        for (int j = 0; j < grid; ++j) {
            const float f = (float)((double)(j + 1) / (double)grid);
            clo[r * grid + j] = lo0[r] * f;
            chi[r * grid + j] = hi0[r] * f;
        }
    qparams_rows(cands, clo.data(), chi.data(), qmin, qmax, div, scheme, zero_code, cs.data(), czp.data());
    for (i64 c = 0; c < cands; ++c) {
        cinv[c] = 1.0f / cs[c];
        cz[c] = (float)czp[c];
    }
    const float fqmin = (float)qmin, fqmax = (float)qmax;
    std::vector<std::vector<int>> sel(rows);
    // Near float32's limit a term's subtraction may overflow, which no bound here covers.
    bool finite_terms = true;
    for (i64 r = 0; r < rows; ++r)
        finite_terms = finite_terms && std::fabs(lo0[r]) < 0x1p126f && std::fabs(hi0[r]) < 0x1p126f;
    const bool prune = errs == nullptr && min_prune > 0 && n >= min_prune && finite_terms;
    #pragma omp parallel for schedule(static) num_threads(nthreads) if(nthreads > 1 && prune && rows > 1)
    for (i64 r = 0; r < rows; ++r) {
        const i64 o = r * grid;
        if (prune) {
            surviving_candidates(x + r * n, n, lo0[r], hi0[r], grid, &cs[o], &cinv[o], &cz[o], fqmin, fqmax, sel[r]);
        } else {
            sel[r].resize(grid);
            for (int j = 0; j < grid; ++j) sel[r][j] = j;
        }
    }
    Grid g(rows, 1, n);
    std::vector<double> part(g.nchunks * (i64)grid, 0.0);
    // Each value costs `grid` candidates' work: worth threads well below Grid::parallel's size.
    #pragma omp parallel for schedule(static) num_threads(nthreads) if(nthreads > 1 && g.nchunks > 1 && rows * n * grid >= 2 * CHUNK)
    for (i64 k = 0; k < g.nchunks; ++k) {
        i64 seg, b, e;
        g.chunk(k, seg, b, e);
        const i64 o = seg * grid;
        mse_chunk(x, b, e, sel[seg].data(), (int)sel[seg].size(), &cs[o], &cinv[o], &cz[o], fqmin, fqmax, &part[k * grid]);
    }
    std::vector<double> tot(grid);
    for (i64 r = 0; r < rows; ++r) {
        for (int j = 0; j < grid; ++j) tot[j] = 0.0;
        for (i64 k = r * g.per_seg; k < (r + 1) * g.per_seg; ++k)
            for (int j : sel[r]) tot[j] += part[k * grid + j];
        double best = INFINITY;
        float bl = lo0[r], bh = hi0[r];
        for (int j : sel[r]) {
            if (tot[j] < best) {
                best = tot[j];
                bl = clo[r * grid + j];
                bh = chi[r * grid + j];
            }
        }
        if (errs)
            for (int j = 0; j < grid; ++j) errs[r * grid + j] = tot[j];
        best_lo[r] = bl;
        best_hi[r] = bh;
        if (err) err[r] = best;
        if (evaluated) evaluated[r] = (int32_t)sel[r].size();
    }
    return 0;
}

}  // extern "C"
// ---- BatchNorm on batch statistics, fused with the quantizer that follows -------------
//
// x: [N, C, HW] (a conv's output), normalized per channel over M = N·HW values.
// Statistics: sums of d = x − K (K the channel's first value, so that the squares do not
// cancel when |mean| >> std) in float over blocks of at most BLOCK values, then in double:
// mean = K + Σd/M, var = Σd²/M − (Σd/M)² (biased; the running variance takes var·M/(M−1)),
// invstd = 1/sqrt(var + eps); and x's least and largest value. The BN output is
// z = (x − K)·a + b with a = γ·invstd and b = β − (mean − K)·a rounded to float32, computed
// in float32 with each step rounded apart: taken about K, z keeps its precision where the
// mean is large against the spread (x·a and β − mean·a would cancel). Rounding is monotone,
// so a channel's least and largest z are the images of its least and largest x (swapped
// where a < 0): an observer's range comes out of the statistics pass, and z is never
// stored. The backward takes x̂ = ((x − K) − (mean − K))·invstd for the same reason. The quantizer
// sees clip(z, clo, chi).
//
// Quantizer kinds: 0 affine (per row: the scale, zero point and [qmin, qmax]: an observed
// quantizer's qparams or LSQ's learned step and zero point, with its gradients); 1 PACT
// (α in scale[0]; forward the affine grid with z = 0, qmin = 0, qmax = top; PACT's
// gradients). A row is the whole tensor (rows_pc = 0) or one channel (rows_pc = 1).

struct RowGrid {
    std::vector<float> s, inv, z, qlo, qhi;
};

static void make_rows(RowGrid& r, int kind, i64 rows, const float* scale, const float* zp, int zp_pc,
                      float qmin, float qmax, float floor) {
    if (kind == 1) {
        float s, inv, top;
        pact_params(scale[0], qmax, s, inv, top);
        r.s.assign(1, s); r.inv.assign(1, inv); r.z.assign(1, 0.0f); r.qlo.assign(1, 0.0f); r.qhi.assign(1, top);
        return;
    }
    Params p;
    make_params(p, rows, scale, zp, zp_pc, qmin, qmax, floor);
    r.s = p.s; r.inv = p.inv; r.z = p.z;
    r.qlo.assign(rows, qmin); r.qhi.assign(rows, qmax);
}

// One segment of the BN output quantized: fq(clip((x − K)·a + b)).
template <bool CLIP>
static void bn_fq_segment(const float* x, float* y, i64 len, float K, float ac, float bc, float s, float inv, float z,
                          float qmin, float qmax, float clo, float chi) {
    #pragma omp simd
    for (i64 i = 0; i < len; ++i) {
        const float u = (x[i] - K) * ac + bc;
        const float v = CLIP ? clip(u, clo, chi) : u;
        float q = std::nearbyint(v * inv) + z;
        q = q < qmin ? qmin : (q > qmax ? qmax : q);
        y[i] = (q - z) * s;
    }
}

extern "C" {

// Per channel: mean and biased variance (double), invstd, a, b (float32), x's min and max.
// Returns 1, writing nothing, when a statistic or a or b is NaN or infinite.
int qatlab_bn_stats(const float* x, i64 N, i64 C, i64 HW, const float* gamma, const float* beta, double eps,
                    double* mean, double* var, float* shift, float* centre, float* invstd, float* a, float* b,
                    float* xmin, float* xmax, int nthreads) {
    const i64 M = N * HW;
    std::vector<double> m(C), v(C);
    std::vector<float> sh(C), ce(C), is(C), fa(C), fb(C), mn(C), mx(C);
    std::vector<int> bad(C, 0);
    #pragma omp parallel for schedule(static) num_threads(nthreads) if(nthreads > 1 && C > 1 && N * C * HW >= 2 * CHUNK)
    for (i64 c = 0; c < C; ++c) {
        const float K = x[c * HW];
        double s1 = 0.0, s2 = 0.0;
        float lo = INFINITY, hi = -INFINITY;
        for (i64 n = 0; n < N; ++n) {
            const float* p = x + (n * C + c) * HW;
            for (i64 b0 = 0; b0 < HW; b0 += BLOCK) {
                const i64 e0 = b0 + BLOCK < HW ? b0 + BLOCK : HW;
                float f1 = 0.0f, f2 = 0.0f;
                #pragma omp simd reduction(+ : f1, f2) reduction(min : lo) reduction(max : hi)
                for (i64 i = b0; i < e0; ++i) {
                    const float xv = p[i], d = xv - K;
                    f1 += d;
                    f2 += d * d;
                    lo = xv < lo ? xv : lo;
                    hi = xv > hi ? xv : hi;
                }
                s1 += f1;
                s2 += f2;
            }
        }
        const double mu = s1 / (double)M;
        double var_c = s2 / (double)M - mu * mu;
        var_c = var_c > 0.0 ? var_c : 0.0;
        const double inv_std = 1.0 / std::sqrt(var_c + eps);
        const double mean_c = (double)K + mu;
        const float g = gamma ? gamma[c] : 1.0f, be = beta ? beta[c] : 0.0f;
        const float ac = (float)((double)g * inv_std);
        const float bc = (float)((double)be - mu * (double)ac);
        m[c] = mean_c; v[c] = var_c; sh[c] = K; ce[c] = (float)mu; is[c] = (float)inv_std; fa[c] = ac; fb[c] = bc;
        mn[c] = lo; mx[c] = hi;
        bad[c] = !(std::isfinite(s1) && std::isfinite(s2) && std::isfinite(inv_std) && std::isfinite(ac) && std::isfinite(bc));
    }
    for (i64 c = 0; c < C; ++c)
        if (bad[c]) return 1;
    for (i64 c = 0; c < C; ++c) {
        mean[c] = m[c]; var[c] = v[c]; shift[c] = sh[c]; centre[c] = ce[c]; invstd[c] = is[c]; a[c] = fa[c]; b[c] = fb[c];
        xmin[c] = mn[c]; xmax[c] = mx[c];
    }
    return 0;
}

// An observed quantizer's range of clip(z) per row, from the statistics (no pass over the
// data), met with its state and turned into qparams as qatlab_fq_observe_forward does.
// Returns 1 (no qparams written) for a NaN or infinite range.
int qatlab_bn_observe(i64 C, const float* shift, const float* a, const float* b, const float* xmin, const float* xmax, int rows_pc,
                      float clo, float chi, const float* frac, int mode, const float* old_lo, const float* old_hi,
                      float keep, float take, float* lo, float* hi, double qmin, double qmax, double div, int scheme,
                      int zero_code, float* scale, int32_t* zp, float* zpf) {
    const i64 rows = rows_pc ? C : 1;
    std::vector<float> blo(rows, INFINITY), bhi(rows, -INFINITY);
    std::vector<int> bnan(rows, 0);
    for (i64 c = 0; c < C; ++c) {
        float zl = (xmin[c] - shift[c]) * a[c] + b[c], zh = (xmax[c] - shift[c]) * a[c] + b[c];
        if (a[c] < 0.0f) { const float t = zl; zl = zh; zh = t; }
        zl = clip(zl, clo, chi);
        zh = clip(zh, clo, chi);
        const i64 r = rows_pc ? c : 0;
        blo[r] = zl < blo[r] ? zl : blo[r];
        bhi[r] = zh > bhi[r] ? zh : bhi[r];
        bnan[r] |= (zl != zl) | (zh != zh);
    }
    if (observe_rows(rows, blo.data(), bhi.data(), bnan.data(), frac, mode, old_lo, old_hi, keep, take, lo, hi,
                     qmin, qmax, div, scheme, zero_code, scale, zp)) return 1;
    for (i64 r = 0; r < rows; ++r) zpf[r] = (float)zp[r];
    return 0;
}

// The running statistics, as torch's batch norm updates them (in double, stored as float32).
void qatlab_bn_update_running(i64 C, i64 M, const double* mean, const double* var, double momentum,
                              float* running_mean, float* running_var) {
    for (i64 c = 0; c < C; ++c) {
        if (running_mean) running_mean[c] = (float)(momentum * mean[c] + (1.0 - momentum) * (double)running_mean[c]);
        if (running_var) {
            const double unbiased = M > 1 ? var[c] * (double)M / (double)(M - 1) : var[c];
            running_var[c] = (float)(momentum * unbiased + (1.0 - momentum) * (double)running_var[c]);
        }
    }
}

// y = fq(clip((x − K)·a + b)): the BN output quantized, one pass over x.
void qatlab_bn_fq_forward(const float* x, float* y, i64 N, i64 C, i64 HW, const float* shift, const float* a, const float* b,
                          int kind, int rows_pc, const float* scale, const float* zp, int zp_pc,
                          float qmin, float qmax, float floor, float clo, float chi, int nthreads) {
    RowGrid r;
    make_rows(r, kind, rows_pc ? C : 1, scale, zp, zp_pc, qmin, qmax, floor);
    const bool clipped = has_clip(clo, chi);
    #pragma omp parallel for schedule(static) num_threads(nthreads) if(nthreads > 1 && N * C > 1 && N * C * HW >= 2 * CHUNK)
    for (i64 k = 0; k < N * C; ++k) {
        const i64 c = k % C, row = rows_pc ? c : 0;
        const float K = shift[c], ac = a[c], bc = b[c], s = r.s[row], inv = r.inv[row], z = r.z[row], ql = r.qlo[row], qh = r.qhi[row];
        if (clipped) bn_fq_segment<true>(x + k * HW, y + k * HW, HW, K, ac, bc, s, inv, z, ql, qh, clo, chi);
        else bn_fq_segment<false>(x + k * HW, y + k * HW, HW, K, ac, bc, s, inv, z, ql, qh, clo, chi);
    }
}

}  // extern "C"

// One value's quantizer gradient at z (the BN output): dz, and the terms of the quantizer's
// parameter sums (affine with SUMS: LSQ's two; PACT: dα's).
struct QGrad { float dz, t0, t1; };

template <int KIND, bool CLIP, bool SUMS>
static inline QGrad bn_quant_grad(float zv, float gv, float s, float inv, float z, float qmin, float qmax,
                                  float alpha, float clo, float chi) {
    QGrad r;
    const float v = CLIP ? clip(zv, clo, chi) : zv;
    float dv;
    if (KIND == 0) {
        const float t = std::nearbyint(v * inv) + z;
        dv = gv * (float)((t >= qmin) & (t <= qmax));
        if (SUMS) {
            const float q = t < qmin ? qmin : (t > qmax ? qmax : t);
            r.t0 = gv * ((q - z) * s) - dv * v;
            r.t1 = gv - dv;
        } else {
            r.t0 = 0.0f;
            r.t1 = 0.0f;
        }
    } else {
        const int above = v >= alpha;
        dv = keep_or_zero(!(above | (v <= 0.0f)), gv);
        r.t0 = keep_or_zero(above, gv);
        r.t1 = 0.0f;
    }
    r.dz = CLIP ? keep_or_zero((zv >= clo) & (zv <= chi), dv) : dv;
    return r;
}

// One segment's sums for the backward (Σdz, Σdz·x̂ and the quantizer's), in float over
// blocks of BLOCK values, added in double.
template <int KIND, bool CLIP, bool SUMS>
static void bn_backward_sums(const float* x, const float* dy, i64 HW, float K, float mk, float invstd, float ac, float bc,
                             float s, float inv, float z, float qmin, float qmax, float alpha, float clo, float chi,
                             double* out) {
    double a_b = 0.0, a_g = 0.0, a_0 = 0.0, a_1 = 0.0;
    for (i64 b0 = 0; b0 < HW; b0 += BLOCK) {
        const i64 e0 = b0 + BLOCK < HW ? b0 + BLOCK : HW;
        float f_b = 0.0f, f_g = 0.0f, f_0 = 0.0f, f_1 = 0.0f;
        #pragma omp simd reduction(+ : f_b, f_g, f_0, f_1)
        for (i64 i = b0; i < e0; ++i) {
            const float d = x[i] - K;
            const QGrad q = bn_quant_grad<KIND, CLIP, SUMS>(d * ac + bc, dy[i], s, inv, z, qmin, qmax, alpha, clo, chi);
            f_b += q.dz;
            f_g += q.dz * ((d - mk) * invstd);
            f_0 += q.t0;
            f_1 += q.t1;
        }
        a_b += f_b; a_g += f_g; a_0 += f_0; a_1 += f_1;
    }
    out[0] = a_b; out[1] = a_g; out[2] = a_0; out[3] = a_1;
}

// One segment's input gradient, dz recomputed (cheaper than storing it):
// dx = γ·invstd·(dz − mean(dz) − x̂·mean(dz·x̂)), written k·dz + c0 + c1·((x − K) − (mean − K)).
template <int KIND, bool CLIP>
static void bn_backward_dx(const float* x, const float* dy, float* dx, i64 len, float K, float mk, float ac, float bc, float k,
                           float c0, float c1, float s, float inv, float z, float qmin, float qmax, float alpha,
                           float clo, float chi) {
    #pragma omp simd
    for (i64 i = 0; i < len; ++i) {
        const float d = x[i] - K;
        const QGrad q = bn_quant_grad<KIND, CLIP, false>(d * ac + bc, dy[i], s, inv, z, qmin, qmax, alpha, clo, chi);
        dx[i] = (k * q.dz + c0) + c1 * (d - mk);
    }
}

extern "C" {

// The backward of BN (batch statistics) then the quantizer. dx (nullable), dgamma and dbeta
// (nullable: Σdz·x̂ and Σdz), the quantizer's: affine with dscale/dzp, LSQ's step and zero
// point; PACT, dα into dscale[0].
void qatlab_bn_fq_backward(const float* x, const float* dy, float* dx, i64 N, i64 C, i64 HW,
                           const float* shift, const float* centre, const float* invstd, const float* gamma,
                           const float* a, const float* b,
                           int kind, int rows_pc, const float* scale, const float* zp, int zp_pc,
                           float qmin, float qmax, float floor, float clo, float chi, double grad_factor,
                           float* dgamma, float* dbeta, float* dscale, float* dzp, int nthreads) {
    const i64 rows = rows_pc ? C : 1;
    RowGrid r;
    make_rows(r, kind, rows, scale, zp, zp_pc, qmin, qmax, floor);
    const float alpha = kind == 1 ? scale[0] : 0.0f;
    const bool clipped = has_clip(clo, chi);
    const bool sums = kind == 0 && (dscale != nullptr || dzp != nullptr);
    // Each segment's sums (in memory order), then each channel's in segment order: the
    // same totals for any thread count.
    const bool par = nthreads > 1 && N * C > 1 && N * C * HW >= 2 * CHUNK;
    std::vector<double> seg_part(N * C * 4);
    #pragma omp parallel for schedule(static) num_threads(nthreads) if(par)
    for (i64 seg = 0; seg < N * C; ++seg) {
        const i64 c = seg % C, row = rows_pc ? c : 0, o = seg * HW;
        const float s = r.s[row], inv = r.inv[row], z = r.z[row], ql = r.qlo[row], qh = r.qhi[row];
        double* out = &seg_part[seg * 4];
#define QATLAB_BN_SUMS(K, CL, SU) bn_backward_sums<K, CL, SU>(x + o, dy + o, HW, shift[c], centre[c], invstd[c], a[c], b[c], \
                                                              s, inv, z, ql, qh, alpha, clo, chi, out)
        if (kind == 1) { if (clipped) QATLAB_BN_SUMS(1, true, false); else QATLAB_BN_SUMS(1, false, false); }
        else if (sums) { if (clipped) QATLAB_BN_SUMS(0, true, true); else QATLAB_BN_SUMS(0, false, true); }
        else { if (clipped) QATLAB_BN_SUMS(0, true, false); else QATLAB_BN_SUMS(0, false, false); }
#undef QATLAB_BN_SUMS
    }
    std::vector<double> part(C * 4, 0.0);
    for (i64 seg = 0; seg < N * C; ++seg)
        for (int j = 0; j < 4; ++j) part[(seg % C) * 4 + j] += seg_part[seg * 4 + j];
    if (dx) {
        // Per channel: k = γ·invstd, c0 = −k·mean(dz), c1 = −k·invstd·mean(dz·x̂); then the
        // segments in memory order.
        const double M = (double)(N * HW);
        std::vector<float> k(C), c0(C), c1(C);
        for (i64 c = 0; c < C; ++c) {
            const double kc = (double)(gamma ? gamma[c] : 1.0f) * (double)invstd[c];
            k[c] = (float)kc;
            c0[c] = (float)(-kc * (part[c * 4] / M));
            c1[c] = (float)(-kc * (part[c * 4 + 1] / M) * (double)invstd[c]);
        }
        #pragma omp parallel for schedule(static) num_threads(nthreads) if(par)
        for (i64 seg = 0; seg < N * C; ++seg) {
            const i64 c = seg % C, row = rows_pc ? c : 0, o = seg * HW;
            const float s = r.s[row], inv = r.inv[row], z = r.z[row], ql = r.qlo[row], qh = r.qhi[row];
#define QATLAB_BN_DX(K, CL) bn_backward_dx<K, CL>(x + o, dy + o, dx + o, HW, shift[c], centre[c], a[c], b[c], k[c], c0[c], c1[c], \
                                                  s, inv, z, ql, qh, alpha, clo, chi)
            if (kind == 1) { if (clipped) QATLAB_BN_DX(1, true); else QATLAB_BN_DX(1, false); }
            else { if (clipped) QATLAB_BN_DX(0, true); else QATLAB_BN_DX(0, false); }
#undef QATLAB_BN_DX
        }
    }
    for (i64 c = 0; c < C; ++c) {
        if (dbeta) dbeta[c] = (float)part[c * 4];
        if (dgamma) dgamma[c] = (float)part[c * 4 + 1];
    }
    if (kind == 1) {
        if (dscale) {
            double t = 0.0;
            for (i64 c = 0; c < C; ++c) t += part[c * 4 + 2];
            dscale[0] = (float)t;
        }
        return;
    }
    if (!sums) return;
    std::vector<double> tot(rows * 2, 0.0);
    for (i64 c = 0; c < C; ++c) {
        const i64 row = rows_pc ? c : 0;
        tot[row * 2] += part[c * 4 + 2];
        tot[row * 2 + 1] += part[c * 4 + 3];
    }
    Params p;
    p.s = r.s;
    lsq_grads(rows, tot.data(), p, scale, floor, grad_factor, zp_pc, dscale, dzp);
}

}  // extern "C"
"""
