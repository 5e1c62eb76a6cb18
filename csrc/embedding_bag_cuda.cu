// CUDA kernels of the embedding bag (sm_80+). A group of TPB lanes (4..32, the power of two nearest
// D, so several bags share a warp when D is small) owns one bag / one gradient segment and strides
// over the D columns (the forward VEC columns at a time, as vector loads, when D and the table's
// alignment allow); bags and segments run along grid axis x (no 65,535 limit). fp32 accumulation.
// Ids >= N are skipped here (never read out of bounds); the Python wrapper reports them by default.
#include "embedding_bag.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace fastint {
namespace {

constexpr int kThreads = 256;

#define FASTINT_DISPATCH_FLOATS(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// Lanes per bag: the power of two >= D, clamped to [4, 32].
int lanes_for(int64_t dim) {
  int lanes = 4;
  while (lanes < 32 && lanes < dim) lanes *= 2;
  return lanes;
}

template <typename F>
void with_lanes(int lanes, F&& f) {
  switch (lanes) {
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 16: f(std::integral_constant<int, 16>{}); break;
    default: f(std::integral_constant<int, 32>{}); break;
  }
}

// Columns per vector access of the forward: 16 bytes' worth (at most 4) when D is a multiple of it
// and the table is aligned to it (a view at an odd storage offset is not), else 1.
template <typename scalar_t>
constexpr int max_vector_width() {
  return sizeof(scalar_t) >= 8 ? 2 : 4;
}

template <typename scalar_t>
int vector_width(const at::Tensor& weight, int64_t dim) {
  constexpr int vec = max_vector_width<scalar_t>();
  const auto address = reinterpret_cast<std::uintptr_t>(weight.const_data_ptr());
  return dim % vec == 0 && address % (vec * sizeof(scalar_t)) == 0 ? vec : 1;
}

template <int VEC, typename F>
void with_vector_width(int width, F&& f) {
  if (width == VEC) {
    f(std::integral_constant<int, VEC>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

// Lanes of this thread's group within its warp: groups of one warp loop over different bags, so a
// shuffle may only name its own group (a full-warp mask with diverged groups is undefined).
template <int TPB>
__device__ inline unsigned group_mask() {
  if constexpr (TPB == 32) {
    return 0xffffffffu;
  } else {
    return ((1u << TPB) - 1u) << (threadIdx.x % 32 / TPB * TPB);
  }
}

template <int TPB, typename acc_t>
__device__ inline acc_t group_sum(acc_t v) {
  const unsigned mask = group_mask<TPB>();
  for (int step = TPB / 2; step > 0; step /= 2) v += __shfl_xor_sync(mask, v, step, TPB);
  return v;
}

// VEC consecutive columns as one aligned vector access (at most 16 bytes: ld.global.v4 / v2).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// Each lane owns VEC consecutive columns per step (VEC > 1 only when D % VEC == 0 and the rows are
// aligned to the vector: see vector_width), so a row is read with vector loads.
template <int TPB, int VEC, typename scalar_t, typename index_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ weight, int64_t rows, int64_t dim,
                               const index_t* __restrict__ ids, const int64_t* __restrict__ offsets,
                               const scalar_t* __restrict__ psw, int64_t mode, int64_t bags,
                               scalar_t* __restrict__ out) {
  using pack_t = Pack<scalar_t, VEC>;
  const int64_t bag = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / TPB;
  const int lane = threadIdx.x % TPB;
  if (bag >= bags) return;
  const int64_t begin = offsets[bag], end = offsets[bag + 1];
  acc_t denom = 0;
  for (int64_t e = begin; e < end; ++e) {
    const index_t id = ids[e];
    if (id >= 0 && id < rows) denom += psw ? static_cast<acc_t>(psw[e]) : acc_t(1);
  }
  const acc_t scale = mode == kMean ? (denom != acc_t(0) ? acc_t(1) / denom : acc_t(0)) : acc_t(1);
  for (int64_t d = static_cast<int64_t>(lane) * VEC; d < dim; d += TPB * VEC) {
    acc_t acc[VEC] = {};
    for (int64_t e = begin; e < end; ++e) {
      const index_t id = ids[e];
      if (id < 0 || id >= rows) continue;
      const acc_t w = psw ? static_cast<acc_t>(psw[e]) : acc_t(1);
      const pack_t row = *reinterpret_cast<const pack_t*>(weight + static_cast<int64_t>(id) * dim + d);
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] += w * static_cast<acc_t>(row.v[j]);
    }
    pack_t pooled;
#pragma unroll
    for (int j = 0; j < VEC; ++j) pooled.v[j] = static_cast<scalar_t>(acc[j] * scale);
    *reinterpret_cast<pack_t*>(out + bag * dim + d) = pooled;
  }
}

template <typename index_t, typename acc_t>
__global__ void entry_scales_kernel(const index_t* __restrict__ ids, const int64_t* __restrict__ offsets,
                                    const acc_t* __restrict__ psw, int64_t mode, int64_t bags,
                                    acc_t* __restrict__ scale, int64_t* __restrict__ bag_of) {
  const int64_t bag = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (bag >= bags) return;
  acc_t denom = 0;
  for (int64_t e = offsets[bag]; e < offsets[bag + 1]; ++e) denom += ids[e] >= 0 ? (psw ? psw[e] : acc_t(1)) : acc_t(0);
  const acc_t factor = mode == kMean ? (denom != acc_t(0) ? acc_t(1) / denom : acc_t(0)) : acc_t(1);
  for (int64_t e = offsets[bag]; e < offsets[bag + 1]; ++e) {
    scale[e] = ids[e] >= 0 ? (psw ? psw[e] : acc_t(1)) * factor : acc_t(0);
    bag_of[e] = bag;
  }
}

// Segments in sorted-id order; each sums its entries sequentially: deterministic.
template <int TPB, typename scalar_t, typename acc_t>
__global__ void segment_sum_kernel(const scalar_t* __restrict__ grad_out, int64_t dim,
                                   const int64_t* __restrict__ perm, const int64_t* __restrict__ segment_offsets,
                                   const acc_t* __restrict__ scale, const int64_t* __restrict__ bag_of,
                                   int64_t segments, scalar_t* __restrict__ rows) {
  const int64_t seg = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / TPB;
  const int lane = threadIdx.x % TPB;
  if (seg >= segments) return;
  for (int64_t d = lane; d < dim; d += TPB) {
    acc_t acc = 0;
    for (int64_t k = segment_offsets[seg]; k < segment_offsets[seg + 1]; ++k) {
      const int64_t e = perm[k];
      acc += scale[e] * static_cast<acc_t>(grad_out[bag_of[e] * dim + d]);
    }
    rows[seg * dim + d] = static_cast<scalar_t>(acc);
  }
}

// d(out_b)/d(w_e) . g_b = (g_b . row_e - [mean] g_b . out_b) * scale_b. All lanes of a group loop
// over the same entries, so each group's reductions are convergent within the group.
template <int TPB, typename scalar_t, typename index_t, typename acc_t>
__global__ void psw_grad_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ weight,
                                int64_t rows, int64_t dim, const index_t* __restrict__ ids,
                                const int64_t* __restrict__ offsets, const scalar_t* __restrict__ psw,
                                int64_t mode, int64_t bags, scalar_t* __restrict__ grad) {
  const int64_t bag = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / TPB;
  const int lane = threadIdx.x % TPB;
  if (bag >= bags) return;  // whole groups exit together (TPB divides the warp; masks are per group)
  const int64_t begin = offsets[bag], end = offsets[bag + 1];
  const scalar_t* g = grad_out + bag * dim;
  auto g_dot_row = [&](index_t id) {   // g . weight[id], summed over the group's lanes
    acc_t part = 0;
    for (int64_t d = lane; d < dim; d += TPB)
      part += static_cast<acc_t>(g[d]) * static_cast<acc_t>(weight[static_cast<int64_t>(id) * dim + d]);
    return group_sum<TPB>(part);
  };
  acc_t denom = 0, g_dot_sum = 0;
  for (int64_t e = begin; e < end; ++e) {
    const index_t id = ids[e];
    if (id < 0 || id >= rows) continue;
    const acc_t w = static_cast<acc_t>(psw[e]);
    denom += w;
    g_dot_sum += w * g_dot_row(id);
  }
  const acc_t scale = mode == kMean ? (denom != acc_t(0) ? acc_t(1) / denom : acc_t(0)) : acc_t(1);
  const acc_t g_dot_out = mode == kMean ? g_dot_sum * scale : acc_t(0);
  for (int64_t e = begin; e < end; ++e) {
    const index_t id = ids[e];
    acc_t value = 0;
    if (id >= 0 && id < rows && scale != acc_t(0)) value = (g_dot_row(id) - g_dot_out) * scale;
    if (lane == 0) grad[e] = static_cast<scalar_t>(value);
  }
}

int64_t blocks_for(int64_t items, int lanes) {
  const int64_t per_block = kThreads / lanes;
  return (items + per_block - 1) / per_block;
}

}  // namespace

at::Tensor bag_forward_cuda(const at::Tensor& weight_in, const at::Tensor& indices_in, const at::Tensor& offsets_in,
                            const std::optional<at::Tensor>& psw_in, int64_t mode) {
  const c10::cuda::CUDAGuard guard(weight_in.device());
  const auto weight = weight_in.contiguous();
  const auto indices = indices_in.contiguous();
  const auto offsets = offsets_in.contiguous();
  const auto psw = psw_in ? std::optional<at::Tensor>(psw_in->contiguous()) : std::nullopt;
  const int64_t bags = offsets.numel() - 1, dim = weight.size(1);
  auto out = at::empty({bags, dim}, weight.options());
  if (bags == 0 || dim == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  FASTINT_DISPATCH_FLOATS(weight.scalar_type(), "bag_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int width = vector_width<scalar_t>(weight, dim);
    const int lanes = lanes_for(dim / width);
    AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "bag_forward_cuda", [&] {
      with_lanes(lanes, [&](auto tpb) {
        with_vector_width<max_vector_width<scalar_t>()>(width, [&](auto v) {
          forward_kernel<decltype(tpb)::value, decltype(v)::value, scalar_t, index_t, acc_t>
              <<<blocks_for(bags, lanes), kThreads, 0, stream>>>(
                  weight.const_data_ptr<scalar_t>(), weight.size(0), dim, indices.const_data_ptr<index_t>(),
                  offsets.const_data_ptr<int64_t>(), psw ? psw->const_data_ptr<scalar_t>() : nullptr, mode,
                  bags, out.mutable_data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
    });
  });
  return out;
}

void entry_scales_cuda(const at::Tensor& indices_in, const at::Tensor& offsets_in,
                       const std::optional<at::Tensor>& psw_in, int64_t mode, at::Tensor& scale, at::Tensor& bag) {
  const c10::cuda::CUDAGuard guard(indices_in.device());
  const auto indices = indices_in.contiguous();
  const auto offsets = offsets_in.contiguous();
  const auto psw = psw_in ? std::optional<at::Tensor>(psw_in->contiguous()) : std::nullopt;
  const int64_t bags = offsets.numel() - 1;
  if (bags == 0) return;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(scale.scalar_type(), "entry_scales_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "entry_scales_cuda", [&] {
      entry_scales_kernel<index_t, scalar_t><<<(bags + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
          indices.const_data_ptr<index_t>(), offsets.const_data_ptr<int64_t>(),
          psw ? psw->const_data_ptr<scalar_t>() : nullptr, mode, bags, scale.mutable_data_ptr<scalar_t>(),
          bag.mutable_data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

at::Tensor segment_sum_cuda(const at::Tensor& grad_out_in, const at::Tensor& perm_in, const at::Tensor& segment_offsets_in,
                            const at::Tensor& scale, const at::Tensor& bag, at::ScalarType out_dtype) {
  const c10::cuda::CUDAGuard guard(grad_out_in.device());
  const auto grad_out = grad_out_in.contiguous();
  const auto perm = perm_in.contiguous();
  const auto segment_offsets = segment_offsets_in.contiguous();
  const int64_t segments = segment_offsets.numel() - 1, dim = grad_out.size(1);
  auto rows = at::empty({segments, dim}, grad_out.options().dtype(out_dtype));
  if (segments == 0 || dim == 0) return rows;
  const int lanes = lanes_for(dim);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  FASTINT_DISPATCH_FLOATS(grad_out.scalar_type(), "segment_sum_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_lanes(lanes, [&](auto tpb) {
      segment_sum_kernel<decltype(tpb)::value, scalar_t, acc_t><<<blocks_for(segments, lanes), kThreads, 0, stream>>>(
          grad_out.const_data_ptr<scalar_t>(), dim, perm.const_data_ptr<int64_t>(),
          segment_offsets.const_data_ptr<int64_t>(), scale.const_data_ptr<acc_t>(), bag.const_data_ptr<int64_t>(),
          segments, rows.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return rows;
}

at::Tensor psw_grad_cuda(const at::Tensor& grad_out_in, const at::Tensor& weight_in, const at::Tensor& indices_in,
                         const at::Tensor& offsets_in, const at::Tensor& psw_in, int64_t mode) {
  const c10::cuda::CUDAGuard guard(weight_in.device());
  const auto grad_out = grad_out_in.contiguous();
  const auto weight = weight_in.contiguous();
  const auto indices = indices_in.contiguous();
  const auto offsets = offsets_in.contiguous();
  const auto psw = psw_in.contiguous();
  const int64_t bags = offsets.numel() - 1, dim = weight.size(1);
  auto grad = at::empty({indices.numel()}, psw.options());
  if (bags == 0) return grad;
  const int lanes = lanes_for(dim);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  FASTINT_DISPATCH_FLOATS(weight.scalar_type(), "psw_grad_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;   // double for fp64 tables, as on the CPU
    AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "psw_grad_cuda", [&] {
      with_lanes(lanes, [&](auto tpb) {
        psw_grad_kernel<decltype(tpb)::value, scalar_t, index_t, acc_t><<<blocks_for(bags, lanes), kThreads, 0, stream>>>(
            grad_out.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(), weight.size(0), dim,
            indices.const_data_ptr<index_t>(), offsets.const_data_ptr<int64_t>(), psw.const_data_ptr<scalar_t>(), mode,
            bags, grad.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return grad;
}

}  // namespace fastint
