// CPU kernels of the embedding bag: parallel over bags (at::parallel_for), contiguous inner loop
// over the embedding dimension, accumulation in opmath (fp32, or fp64 for fp64 tables).
#include "embedding_bag.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace fastint {
namespace {

constexpr int64_t kGrain = 64;  // bags per parallel chunk

#define FASTINT_DISPATCH_FLOATS(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)
#define FASTINT_DISPATCH_INDEX(TYPE, NAME, ...) \
  AT_DISPATCH_INDEX_TYPES(TYPE, NAME, __VA_ARGS__)

template <typename index_t>
inline void check_id(index_t id, int64_t rows) {
  TORCH_CHECK_INDEX(id < rows, "embedding_bag: index ", static_cast<int64_t>(id),
                    " is out of range for an embedding table of ", rows, " rows");
}

constexpr int64_t kChunk = 16;  // columns accumulated in registers at a time (vectorised)
constexpr int64_t kWideChunk = 64;  // first, for wide rows: one pass over the bag's ids per 64 columns
// Random row reads are latency bound: while summing entry e, the row of entry e + kPrefetch
// (possibly in a later bag, before prefetch_end) is requested.
constexpr int64_t kPrefetch = 16;
constexpr int64_t kCacheLine = 64;

// The per-bag code is force-inlined into each ISA build of the forward loop (forward_range*).
#if defined(__GNUC__)
#define FASTINT_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define FASTINT_ALWAYS_INLINE inline
#endif

// Checks the ids of one bag and returns its denominator (sum of present weights, or their count).
template <typename scalar_t, typename index_t, typename acc_t>
acc_t bag_denominator(int64_t rows, const index_t* ids, const scalar_t* psw, int64_t begin, int64_t end) {
  acc_t denom = 0;
  for (int64_t e = begin; e < end; ++e) {
    if (ids[e] < 0) continue;
    check_id(ids[e], rows);
    denom += psw ? static_cast<acc_t>(psw[e]) : acc_t(1);
  }
  return denom;
}

template <typename acc_t>
inline acc_t bag_scale(int64_t mode, acc_t denom) {
  return mode == kMean ? (denom != acc_t(0) ? acc_t(1) / denom : acc_t(0)) : acc_t(1);
}

// Columns [d0, d0 + width) of one bag: out = scale * sum_e w_e * weight[id_e] over the present ids
// (already checked), accumulated in a local array; WIDTH > 0 fixes the width at compile time so the
// accumulators stay in vector registers (WIDTH == 0: the run-time `width`, for the tail).
template <int64_t WIDTH, typename scalar_t, typename index_t, typename acc_t, typename out_t>
FASTINT_ALWAYS_INLINE void sum_columns(const scalar_t* __restrict__ weight, int64_t dim, const index_t* __restrict__ ids,
                                       const scalar_t* __restrict__ psw, int64_t begin, int64_t end,
                                       int64_t prefetch_end, int64_t d0, int64_t width, acc_t scale,
                                       out_t* __restrict__ out) {
  constexpr int64_t kSlots = WIDTH > 0 ? WIDTH : kChunk;
  const int64_t n = WIDTH > 0 ? WIDTH : width;
  const auto base = reinterpret_cast<uintptr_t>(weight + d0);
  const auto stride = static_cast<uintptr_t>(dim) * sizeof(scalar_t);
  acc_t local[kSlots] = {};
  for (int64_t e = begin; e < end; ++e) {
    if (e + kPrefetch < prefetch_end) {
      // A hint only (never faults, so the id is not checked): every cache line of the row's chunk.
      const auto line = base + static_cast<uintptr_t>(static_cast<int64_t>(ids[e + kPrefetch])) * stride;
      for (int64_t byte = 0; byte < n * static_cast<int64_t>(sizeof(scalar_t)); byte += kCacheLine) {
        __builtin_prefetch(reinterpret_cast<const void*>(line + byte));
      }
    }
    const index_t id = ids[e];
    if (id < 0) continue;
    const acc_t w = psw ? static_cast<acc_t>(psw[e]) : acc_t(1);
    const scalar_t* __restrict__ row = weight + static_cast<int64_t>(id) * dim + d0;
#pragma GCC unroll 64
    for (int64_t j = 0; j < n; ++j) local[j] += w * static_cast<acc_t>(row[j]);
  }
  for (int64_t j = 0; j < n; ++j) out[d0 + j] = static_cast<out_t>(local[j] * scale);
}

// out[0:D] = scale * sum_e w_e * weight[id_e] over the bag's present ids, checking the ids first
// (a separate pass: a throwing check inside the accumulation loop halves its speed); returns
// scale (1 for sum; for mean 1 / sum of present weights, or 1 / their count; 0 if that is 0).
template <typename scalar_t, typename index_t, typename acc_t, typename out_t>
FASTINT_ALWAYS_INLINE acc_t bag_sum(const scalar_t* weight, int64_t rows, int64_t dim, const index_t* ids,
                                    const scalar_t* psw, int64_t begin, int64_t end, int64_t prefetch_end,
                                    int64_t mode, out_t* out) {
  const acc_t scale = bag_scale(mode, bag_denominator<scalar_t, index_t, acc_t>(rows, ids, psw, begin, end));
  int64_t d0 = 0;
  for (; d0 + kWideChunk <= dim; d0 += kWideChunk) {
    sum_columns<kWideChunk>(weight, dim, ids, psw, begin, end, prefetch_end, d0, kWideChunk, scale, out);
  }
  for (; d0 + kChunk <= dim; d0 += kChunk) {
    sum_columns<kChunk>(weight, dim, ids, psw, begin, end, prefetch_end, d0, kChunk, scale, out);
  }
  if (d0 < dim) sum_columns<0>(weight, dim, ids, psw, begin, end, prefetch_end, d0, dim - d0, scale, out);
  return scale;
}

// Columns [d0, d0 + width) of one gradient segment: sum over its entries k (sorted order) of
// scale[perm[k]] * grad_out[bag[perm[k]]]. WIDTH as in sum_columns.
template <int64_t WIDTH, typename scalar_t, typename acc_t>
inline void segment_columns(const scalar_t* __restrict__ grad_out, int64_t dim, const int64_t* __restrict__ perm,
                            int64_t begin, int64_t end, const acc_t* __restrict__ scale,
                            const int64_t* __restrict__ bag, int64_t d0, int64_t width, scalar_t* __restrict__ out) {
  constexpr int64_t kSlots = WIDTH > 0 ? WIDTH : kChunk;
  const int64_t n = WIDTH > 0 ? WIDTH : width;
  acc_t local[kSlots] = {};
  for (int64_t k = begin; k < end; ++k) {
    const int64_t e = perm[k];
    const acc_t factor = scale[e];
    const scalar_t* __restrict__ grow = grad_out + bag[e] * dim + d0;
#pragma GCC unroll 16
    for (int64_t j = 0; j < n; ++j) local[j] += factor * static_cast<acc_t>(grow[j]);
  }
  for (int64_t j = 0; j < n; ++j) out[d0 + j] = static_cast<scalar_t>(local[j]);
}

// The forward over bags [first, last) of one parallel chunk.
template <typename scalar_t, typename index_t>
struct BagRange {
  const scalar_t* weight;
  int64_t rows, dim;
  const index_t* ids;
  const int64_t* offsets;
  const scalar_t* psw;
  int64_t nnz, mode;
  scalar_t* out;
};

template <typename scalar_t, typename index_t>
FASTINT_ALWAYS_INLINE void forward_range_body(const BagRange<scalar_t, index_t>& r, int64_t first, int64_t last) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t* off = r.offsets;
  const int64_t prefetch_end = std::min(off[last], r.nnz);
  for (int64_t b = first; b < last; ++b) {
    // Checked before the bag is read: offsets are never trusted on CPU (no separate pass).
    TORCH_CHECK_VALUE(off[b] <= off[b + 1] && off[b + 1] <= r.nnz, "offsets must be non-decreasing and <= nnz=",
                      r.nnz, ", got offsets[", b, "] = ", off[b], ", offsets[", b + 1, "] = ", off[b + 1]);
    bag_sum<scalar_t, index_t, acc_t>(r.weight, r.rows, r.dim, r.ids, r.psw, off[b], off[b + 1], prefetch_end,
                                      r.mode, r.out + b * r.dim);
  }
}

// Baseline ISA build of the loop, and (x86) an AVX2+FMA build of the same code chosen at run time:
// the module is compiled for the baseline ISA, so only this function uses AVX2 instructions.
template <typename scalar_t, typename index_t>
void forward_range(const BagRange<scalar_t, index_t>& r, int64_t first, int64_t last) {
  forward_range_body(r, first, last);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define FASTINT_X86 1
template <typename scalar_t, typename index_t>
__attribute__((target("avx2,fma"))) void forward_range_avx2(const BagRange<scalar_t, index_t>& r, int64_t first,
                                                             int64_t last) {
  forward_range_body(r, first, last);
}
bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#else
#define FASTINT_X86 0
bool cpu_has_avx2() { return false; }
#endif

}  // namespace

at::Tensor bag_forward_cpu(const at::Tensor& weight_in, const at::Tensor& indices_in, const at::Tensor& offsets_in,
                           const std::optional<at::Tensor>& psw_in, int64_t mode) {
  const auto weight = weight_in.contiguous();
  const auto indices = indices_in.contiguous();
  const auto offsets = offsets_in.contiguous();
  const auto psw = psw_in ? std::optional<at::Tensor>(psw_in->contiguous()) : std::nullopt;
  const int64_t bags = offsets.numel() - 1, dim = weight.size(1), rows = weight.size(0);
  auto out = at::empty({bags, dim}, weight.options());
  const int64_t nnz = indices.numel();
  const int64_t* off = offsets.const_data_ptr<int64_t>();
  TORCH_CHECK_VALUE(bags >= 0 && off[0] == 0 && off[bags] == nnz, "offsets must start at 0 and end at nnz=", nnz,
                    ", got ", off[0], " .. ", off[bags]);
  FASTINT_DISPATCH_FLOATS(weight.scalar_type(), "bag_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    FASTINT_DISPATCH_INDEX(indices.scalar_type(), "bag_forward_cpu", [&] {
      const scalar_t* w = weight.const_data_ptr<scalar_t>();
      const index_t* ids = indices.const_data_ptr<index_t>();
      const scalar_t* pw = psw ? psw->const_data_ptr<scalar_t>() : nullptr;
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      const BagRange<scalar_t, index_t> range{w, rows, dim, ids, off, pw, nnz, mode, o};
      const bool avx2 = cpu_has_avx2();
      at::parallel_for(0, bags, kGrain, [&](int64_t first, int64_t last) {
#if FASTINT_X86
        if (avx2) return forward_range_avx2(range, first, last);
#endif
        forward_range(range, first, last);
      });
    });
  });
  return out;
}

void entry_scales_cpu(const at::Tensor& indices_in, const at::Tensor& offsets_in,
                      const std::optional<at::Tensor>& psw_in, int64_t mode, at::Tensor& scale, at::Tensor& bag) {
  const auto indices = indices_in.contiguous();
  const auto offsets = offsets_in.contiguous();
  const auto psw = psw_in ? std::optional<at::Tensor>(psw_in->contiguous()) : std::nullopt;
  const int64_t bags = offsets.numel() - 1;
  const auto acc_type = scale.scalar_type();
  AT_DISPATCH_FLOATING_TYPES(acc_type, "entry_scales_cpu", [&] {
    using acc_t = scalar_t;
    FASTINT_DISPATCH_INDEX(indices.scalar_type(), "entry_scales_cpu", [&] {
      const index_t* ids = indices.const_data_ptr<index_t>();
      const int64_t* off = offsets.const_data_ptr<int64_t>();
      acc_t* s = scale.mutable_data_ptr<acc_t>();
      int64_t* bg = bag.mutable_data_ptr<int64_t>();
      const acc_t* pw = psw ? psw->const_data_ptr<acc_t>() : nullptr;  // already in acc_t
      auto weight_of = [&](int64_t e) { return pw ? pw[e] : acc_t(1); };
      at::parallel_for(0, bags, kGrain, [&](int64_t first, int64_t last) {
        for (int64_t b = first; b < last; ++b) {
          acc_t denom = 0;
          for (int64_t e = off[b]; e < off[b + 1]; ++e) denom += ids[e] >= 0 ? weight_of(e) : acc_t(0);
          const acc_t bag_factor = bag_scale(mode, denom);
          for (int64_t e = off[b]; e < off[b + 1]; ++e) {
            s[e] = ids[e] >= 0 ? weight_of(e) * bag_factor : acc_t(0);
            bg[e] = b;
          }
        }
      });
    });
  });
}

at::Tensor segment_sum_cpu(const at::Tensor& grad_out_in, const at::Tensor& perm, const at::Tensor& segment_offsets,
                           const at::Tensor& scale, const at::Tensor& bag, at::ScalarType out_dtype) {
  const auto grad_out = grad_out_in.contiguous();
  const int64_t segments = segment_offsets.numel() - 1, dim = grad_out.size(1);
  auto rows = at::empty({segments, dim}, grad_out.options().dtype(out_dtype));
  FASTINT_DISPATCH_FLOATS(grad_out.scalar_type(), "segment_sum_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad_out.const_data_ptr<scalar_t>();
    const int64_t* p = perm.const_data_ptr<int64_t>();
    const int64_t* seg = segment_offsets.const_data_ptr<int64_t>();
    const acc_t* s = scale.const_data_ptr<acc_t>();
    const int64_t* bg = bag.const_data_ptr<int64_t>();
    scalar_t* r = rows.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, segments, kGrain, [&](int64_t first, int64_t last) {
      for (int64_t u = first; u < last; ++u) {
        int64_t d0 = 0;
        for (; d0 + kChunk <= dim; d0 += kChunk) {
          segment_columns<kChunk>(g, dim, p, seg[u], seg[u + 1], s, bg, d0, kChunk, r + u * dim);
        }
        if (d0 < dim) segment_columns<0>(g, dim, p, seg[u], seg[u + 1], s, bg, d0, dim - d0, r + u * dim);
      }
    });
  });
  return rows;
}

at::Tensor psw_grad_cpu(const at::Tensor& grad_out_in, const at::Tensor& weight_in, const at::Tensor& indices_in,
                        const at::Tensor& offsets_in, const at::Tensor& psw_in, int64_t mode) {
  const auto grad_out = grad_out_in.contiguous();
  const auto weight = weight_in.contiguous();
  const auto indices = indices_in.contiguous();
  const auto offsets = offsets_in.contiguous();
  const auto psw = psw_in.contiguous();
  const int64_t bags = offsets.numel() - 1, dim = weight.size(1), rows = weight.size(0);
  const int64_t nnz = indices.numel();
  auto grad = at::empty({indices.numel()}, psw.options());
  FASTINT_DISPATCH_FLOATS(weight.scalar_type(), "psw_grad_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    FASTINT_DISPATCH_INDEX(indices.scalar_type(), "psw_grad_cpu", [&] {
      const scalar_t* w = weight.const_data_ptr<scalar_t>();
      const scalar_t* g = grad_out.const_data_ptr<scalar_t>();
      const index_t* ids = indices.const_data_ptr<index_t>();
      const int64_t* off = offsets.const_data_ptr<int64_t>();
      const scalar_t* pw = psw.const_data_ptr<scalar_t>();
      scalar_t* out = grad.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, bags, kGrain, [&](int64_t first, int64_t last) {
        std::vector<acc_t> acc(dim);
        for (int64_t b = first; b < last; ++b) {
          // out_b = sum(w r)/W (mean) or sum(w r): d/dw_e = g.(r_e - out_b)/W or g.r_e.
          const auto denom = bag_denominator<scalar_t, index_t, acc_t>(rows, ids, pw, off[b], off[b + 1]);
          const acc_t scale = bag_scale(mode, denom);
          acc_t g_dot_out = 0;
          if (mode == kMean) {
            bag_sum<scalar_t, index_t, acc_t>(w, rows, dim, ids, pw, off[b], off[b + 1], std::min(off[last], nnz),
                                              mode, acc.data());
            for (int64_t d = 0; d < dim; ++d) g_dot_out += static_cast<acc_t>(g[b * dim + d]) * acc[d];
          }
          for (int64_t e = off[b]; e < off[b + 1]; ++e) {
            const index_t id = ids[e];
            if (id < 0 || scale == acc_t(0)) { out[e] = scalar_t(0); continue; }
            acc_t g_dot_row = 0;
            const scalar_t* row = w + static_cast<int64_t>(id) * dim;
            for (int64_t d = 0; d < dim; ++d) {
              g_dot_row += static_cast<acc_t>(g[b * dim + d]) * static_cast<acc_t>(row[d]);
            }
            out[e] = static_cast<scalar_t>((g_dot_row - g_dot_out) * scale);
          }
        }
      });
    });
  });
  return grad;
}

}  // namespace fastint
