// The fastint::embedding_bag_* operators: schemas, device dispatch and the device-generic parts
// of the backward (a stable sort of the ids and their run-length encoding, which make the weight
// gradient a deterministic segment reduction: no float atomics, bit-identical across runs).
#include "embedding_bag.h"

#include <ATen/OpMathType.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ge.h>
#include <ATen/ops/masked_fill.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/unique_consecutive.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>

namespace fastint {
namespace {

#ifdef FASTINT_WITH_CUDA
#define FASTINT_ON_DEVICE(TENSOR, NAME, ...) \
  ((TENSOR).is_cuda() ? NAME##_cuda(__VA_ARGS__) : NAME##_cpu(__VA_ARGS__))
#else
void require_cpu(const at::Tensor& t) {
  TORCH_CHECK(!t.is_cuda(), "fastint was built without its CUDA kernels (FASTINT_CUDA=off, or no nvcc / "
                            "a CPU-only torch at build time): rebuild it on the GPU machine");
}
#define FASTINT_ON_DEVICE(TENSOR, NAME, ...) (require_cpu(TENSOR), NAME##_cpu(__VA_ARGS__))
#endif

void check_mode(int64_t mode) {
  TORCH_CHECK(mode == kSum || mode == kMean, "embedding_bag: mode must be 0 (sum) or 1 (mean), got ", mode);
}

// `sparse` only selects the layout of the weight gradient (as in at::embedding); unused here.
at::Tensor forward(const at::Tensor& weight, const at::Tensor& indices, const at::Tensor& offsets,
                   const std::optional<at::Tensor>& psw, int64_t mode, bool /*sparse*/) {
  check_mode(mode);
  return FASTINT_ON_DEVICE(weight, bag_forward, weight, indices, offsets, psw, mode);
}

// Sorted unique present ids [U] (int64) and their gradient rows [U, D] in grad_out's dtype.
// An id outside [0, num_rows) is missing, as in the forward (negative by contract; too large only
// with the Python-side checks off): it gets no gradient and leaves the mean's denominator.
std::tuple<at::Tensor, at::Tensor> coalesced_grad(const at::Tensor& grad_out, const at::Tensor& indices,
                                                  const at::Tensor& offsets, const std::optional<at::Tensor>& psw,
                                                  int64_t mode, int64_t num_rows) {
  check_mode(mode);
  const auto acc_type = at::toOpMathType(grad_out.scalar_type());
  const int64_t nnz = indices.numel();
  // Missing ids -> -1: they form at most one segment, first after the sort, which is dropped.
  const auto ids = indices.to(at::kLong).clamp_min(-1).masked_fill(at::ge(indices, num_rows), -1);
  auto scale = at::empty({nnz}, grad_out.options().dtype(acc_type));
  auto bag = at::empty({nnz}, indices.options().dtype(at::kLong));
  const auto psw_acc = psw ? std::optional<at::Tensor>(psw->to(acc_type)) : std::nullopt;
  FASTINT_ON_DEVICE(grad_out, entry_scales, ids, offsets, psw_acc, mode, scale, bag);
  auto [sorted, perm] = at::sort(ids, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  auto [unique, inverse, counts] = at::unique_consecutive(sorted, /*return_inverse=*/false, /*return_counts=*/true);
  auto segment_offsets = at::cat({at::zeros({1}, counts.options()), counts.cumsum(0)});
  const int64_t skip = unique.numel() > 0 && unique[0].item<int64_t>() < 0 ? 1 : 0;
  unique = unique.slice(0, skip);
  segment_offsets = segment_offsets.slice(0, skip);
  auto rows = FASTINT_ON_DEVICE(grad_out, segment_sum, grad_out, perm, segment_offsets, scale, bag,
                                grad_out.scalar_type());
  return std::make_tuple(unique, rows);
}

at::Tensor weight_grad(const at::Tensor& grad_out, const at::Tensor& indices, const at::Tensor& offsets,
                       const std::optional<at::Tensor>& psw, int64_t mode, int64_t num_rows) {
  auto [unique, rows] = coalesced_grad(grad_out, indices, offsets, psw, mode, num_rows);
  // Each row is written once (unique ids): deterministic.
  return at::zeros({num_rows, grad_out.size(1)}, grad_out.options()).index_copy_(0, unique, rows);
}

at::Tensor psw_grad(const at::Tensor& grad_out, const at::Tensor& weight, const at::Tensor& indices,
                    const at::Tensor& offsets, const at::Tensor& psw, int64_t mode) {
  check_mode(mode);
  return FASTINT_ON_DEVICE(weight, psw_grad, grad_out, weight, indices, offsets, psw, mode);
}

}  // namespace

TORCH_LIBRARY(fastint, m) {
  m.def("embedding_bag_forward(Tensor weight, Tensor indices, Tensor offsets, Tensor? per_sample_weights, "
        "int mode, bool sparse=False) -> Tensor");
  m.def("embedding_bag_weight_grad(Tensor grad_out, Tensor indices, Tensor offsets, "
        "Tensor? per_sample_weights, int mode, int num_rows) -> Tensor");
  m.def("embedding_bag_weight_grad_coalesced(Tensor grad_out, Tensor indices, Tensor offsets, "
        "Tensor? per_sample_weights, int mode, int num_rows) -> (Tensor, Tensor)");
  m.def("embedding_bag_psw_grad(Tensor grad_out, Tensor weight, Tensor indices, Tensor offsets, "
        "Tensor per_sample_weights, int mode) -> Tensor");
}

#define FASTINT_REGISTER_IMPLS(m)                                     \
  m.impl("embedding_bag_forward", &forward);                          \
  m.impl("embedding_bag_weight_grad", &weight_grad);                  \
  m.impl("embedding_bag_weight_grad_coalesced", &coalesced_grad);     \
  m.impl("embedding_bag_psw_grad", &psw_grad)

TORCH_LIBRARY_IMPL(fastint, CPU, m) { FASTINT_REGISTER_IMPLS(m); }
#ifdef FASTINT_WITH_CUDA
TORCH_LIBRARY_IMPL(fastint, CUDA, m) { FASTINT_REGISTER_IMPLS(m); }
#endif

}  // namespace fastint
