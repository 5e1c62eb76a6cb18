// Table-batched embedding bag: shared declarations of the CPU and CUDA kernels.
//
// Bags are given in CSR form: bag b holds entries offsets[b] .. offsets[b+1]-1 of `indices`
// (and of `per_sample_weights`, if any). Entry e contributes w_e * weight[indices[e]] to its bag;
// a negative id is missing (contributes nothing, is not counted). mode SUM: the sum; mode MEAN:
// the sum divided by sum(w) (or by the count of present ids without weights), zero if that is 0.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace fastint {

enum BagMode : int64_t { kSum = 0, kMean = 1 };

// out [num_bags, D] in weight's dtype (fp32 accumulation; fp64 for fp64 weights).
at::Tensor bag_forward_cpu(const at::Tensor& weight, const at::Tensor& indices, const at::Tensor& offsets,
                           const std::optional<at::Tensor>& psw, int64_t mode);
// scale [nnz] (opmath dtype; psw given in that dtype) = present_e * w_e * (MEAN ? 1/denominator(bag) : 1)
// and bag [nnz] (int64).
void entry_scales_cpu(const at::Tensor& indices, const at::Tensor& offsets, const std::optional<at::Tensor>& psw,
                      int64_t mode, at::Tensor& scale, at::Tensor& bag);
// rows[u] = sum over the entries k of segment u (in sorted order) of scale[perm[k]] * grad_out[bag[perm[k]]].
at::Tensor segment_sum_cpu(const at::Tensor& grad_out, const at::Tensor& perm, const at::Tensor& segment_offsets,
                           const at::Tensor& scale, const at::Tensor& bag, at::ScalarType out_dtype);
// d out_b / d w_e contracted with grad_out: [nnz].
at::Tensor psw_grad_cpu(const at::Tensor& grad_out, const at::Tensor& weight, const at::Tensor& indices,
                        const at::Tensor& offsets, const at::Tensor& psw, int64_t mode);

#ifdef FASTINT_WITH_CUDA
at::Tensor bag_forward_cuda(const at::Tensor& weight, const at::Tensor& indices, const at::Tensor& offsets,
                            const std::optional<at::Tensor>& psw, int64_t mode);
void entry_scales_cuda(const at::Tensor& indices, const at::Tensor& offsets, const std::optional<at::Tensor>& psw,
                       int64_t mode, at::Tensor& scale, at::Tensor& bag);
at::Tensor segment_sum_cuda(const at::Tensor& grad_out, const at::Tensor& perm, const at::Tensor& segment_offsets,
                            const at::Tensor& scale, const at::Tensor& bag, at::ScalarType out_dtype);
at::Tensor psw_grad_cuda(const at::Tensor& grad_out, const at::Tensor& weight, const at::Tensor& indices,
                         const at::Tensor& offsets, const at::Tensor& psw, int64_t mode);
#endif

}  // namespace fastint
