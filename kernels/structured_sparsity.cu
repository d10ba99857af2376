/*
 * structured_sparsity.cu: the permutation-search kernels on a CUDA GPU.
 *
 * Implements structured_sparsity.h. A search handle keeps the magnitudes and
 * the window's tables on the device; each call uploads the (small)
 * permutation and group list and downloads one result per group.
 *
 * ss_stripe_groups: one block per stripe group. Its warps score the window's
 * subsets (lanes stride over rows, a warp shuffle sums them), then its
 * threads score the partitions from those subset scores and a block
 * reduction keeps the best, the lowest partition index among equals.
 * Integer sums make the result independent of the reduction order, hence
 * equal to the CPU's. Kernels that hold a row of a stripe are templates on
 * the stripe width M, so its M values and their sorting network stay in
 * registers.
 *
 * ss_column_swaps: one warp per stripe finds each row's n-th and (n+1)-th
 * largest value; then one warp per (position, column) pair adds, over rows,
 * how each of the two stripes changes when one value leaves and the other
 * arrives, which those two thresholds decide (no stripe is rescored).
 */
#include "structured_sparsity.h"
#include "structured_sparsity_checks.h"

#include <cuda_runtime.h>
#include <limits.h>
#include <stdlib.h>

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxWindow = SS_MAX_WINDOW;

__host__ __device__ __forceinline__ int min_of(int a, int b) { return a < b ? a : b; }
__host__ __device__ __forceinline__ int max_of(int a, int b) { return a > b ? a : b; }

__device__ __forceinline__ int top2(int a, int b, int c, int d) {
  int high_ab = max(a, b), low_ab = min(a, b);
  int high_cd = max(c, d), low_cd = min(c, d);
  return max(high_ab, high_cd) + max(min(high_ab, high_cd), max(low_ab, low_cd));
}

/* Sorts the M values `v` (M = 2, 4, 8 or 16) ascending: Batcher's odd-even
 * merge sort (the network structured_sparsity_network.h writes), unrolled
 * at compile time so that `v` stays in registers. */
template <int M>
__host__ __device__ __forceinline__ void sort_values(int (&v)[M]) {
  constexpr int kLog = M == 2 ? 1 : M == 4 ? 2 : M == 8 ? 3 : 4;
#pragma unroll
  for (int lp = 0; lp < kLog; ++lp) {
    const int p = 1 << lp;
#pragma unroll
    for (int lk = lp; lk >= 0; --lk) {
      const int k = 1 << lk;
#pragma unroll
      for (int j = k % p; j + k < M; j += 2 * k) {
#pragma unroll
        for (int i = 0; i < k; ++i) {
          if (i + j + k < M && (i + j) / (2 * p) == (i + j + k) / (2 * p)) {
            const int a = v[i + j], b = v[i + j + k];
            v[i + j] = min_of(a, b);
            v[i + j + k] = max_of(a, b);
          }
        }
      }
    }
  }
}

/* The sum of the n largest of the M values `v` (sorting them). */
template <int M>
__host__ __device__ __forceinline__ int top_n_sum(int (&v)[M], int n) {
  sort_values<M>(v);
  int sum = 0;
#pragma unroll
  for (int w = 0; w < M; ++w) sum += w >= M - n ? v[w] : 0;
  return sum;
}

/* The change of what a row of a stripe keeps when its value `out` leaves
 * and `in` takes its place, from the row's n-th (`nth`) and (n+1)-th
 * (`next`) largest values: a leaving value among the n largest gives way to
 * the (n+1)-th, and an arriving value above the n-th largest of those left
 * displaces it. */
__host__ __device__ __forceinline__ int replaced_row_change(int out, int in, int nth, int next) {
  const bool kept = out >= nth;
  const int threshold = kept ? next : nth;
  return (kept ? next - out : 0) + max_of(in - threshold, 0);
}

/* What an n:M mask keeps of row r of the M columns. */
template <int M>
__device__ __forceinline__ int row_kept(const int *const (&columns)[M], long long r, int n) {
  int v[M];
#pragma unroll
  for (int k = 0; k < M; ++k) v[k] = __ldg(columns[k] + r);
  if constexpr (M == 4) {
    if (n == 2) return top2(v[0], v[1], v[2], v[3]);
  }
  return top_n_sum<M>(v, n);
}

/* Sum over rows of what an n:M mask keeps of M columns, by one warp; every
 * lane gets it. */
template <int M>
__device__ long long warp_stripe_score(const int *const (&columns)[M], long long rows, int n,
                                       int lane) {
  long long sum = 0;
  for (long long r = lane; r < rows; r += 32) sum += row_kept<M>(columns, r, n);
  for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  return sum;
}

template <int M>
__global__ void stripe_groups_kernel(const int *magnitudes, long long rows, int n,
                                     const int *subsets, int subset_count,
                                     const int *partitions, long long partition_count,
                                     int window, const int *permutation,
                                     const int *groups, long long *improvements,
                                     int *best_partitions) {
  extern __shared__ long long subset_scores[];
  __shared__ int columns[kMaxWindow];
  __shared__ long long best_scores[kThreads];
  __shared__ int best_indices[kThreads];
  const long long g = blockIdx.x;
  const int stripes = window / M, tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  if (tid < window) columns[tid] = permutation[M * groups[g * stripes + tid / M] + tid % M];
  __syncthreads();

  for (int q = warp; q < subset_count; q += kWarps) {
    const int *subset = subsets + M * q;
    const int *stripe[M];
#pragma unroll
    for (int k = 0; k < M; ++k) stripe[k] = magnitudes + (long long)columns[subset[k]] * rows;
    long long score = warp_stripe_score<M>(stripe, rows, n, lane);
    if (lane == 0) subset_scores[q] = score;
  }
  __syncthreads();

  long long best = LLONG_MIN;
  int best_p = INT_MAX;
  for (long long p = tid; p < partition_count; p += kThreads) {
    const int *partition = partitions + p * stripes;
    long long score = 0;
    for (int k = 0; k < stripes; ++k) score += subset_scores[partition[k]];
    if (score > best) {  // p grows: the first best of this thread stays
      best = score;
      best_p = (int)p;
    }
  }
  best_scores[tid] = best;
  best_indices[tid] = best_p;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (tid < stride) {
      long long other = best_scores[tid + stride];
      int other_p = best_indices[tid + stride];
      if (other > best_scores[tid] || (other == best_scores[tid] && other_p < best_indices[tid])) {
        best_scores[tid] = other;
        best_indices[tid] = other_p;
      }
    }
    __syncthreads();
  }
  if (tid == 0) {
    long long identity = 0;
    for (int k = 0; k < stripes; ++k) identity += subset_scores[partitions[k]];
    improvements[g] = best_scores[0] - identity;
    best_partitions[g] = best_indices[0];
  }
}

/* One warp per stripe: each row's n-th and (n+1)-th largest value. */
template <int M>
__global__ void stripe_thresholds_kernel(const int *magnitudes, long long rows, int n,
                                         const int *permutation, long long stripe_count,
                                         int *nth, int *next) {
  const long long t = (long long)blockIdx.x * kWarps + threadIdx.x / 32;
  if (t >= stripe_count) return;
  const int *stripe[M];
#pragma unroll
  for (int k = 0; k < M; ++k) stripe[k] = magnitudes + (long long)permutation[M * t + k] * rows;
  for (long long r = threadIdx.x % 32; r < rows; r += 32) {
    int v[M];
#pragma unroll
    for (int k = 0; k < M; ++k) v[k] = __ldg(stripe[k] + r);
    sort_values<M>(v);
    nth[t * rows + r] = v[M - n];
    next[t * rows + r] = v[M - n - 1];
  }
}

/* One warp per (position, column) pair: the gain of swapping them, from the
 * two stripes' row thresholds. */
__global__ void column_swaps_kernel(const int *magnitudes, long long rows, int m, long long cols,
                                    const int *permutation, const int *positions,
                                    long long position_count, const int *nth, const int *next,
                                    long long *improvements) {
  const long long pair = (long long)blockIdx.x * kWarps + threadIdx.x / 32;
  if (pair >= position_count * cols) return;
  const int lane = threadIdx.x % 32;
  const long long i = pair / cols, q = pair % cols;
  const int p = positions[i];
  const long long sp = p / m, sq = q / m;
  if (sp == sq) {
    if (lane == 0) improvements[pair] = 0;
    return;
  }
  const int *mine = magnitudes + (long long)permutation[p] * rows;
  const int *theirs = magnitudes + (long long)permutation[q] * rows;
  const int *nth_p = nth + sp * rows, *next_p = next + sp * rows;
  const int *nth_q = nth + sq * rows, *next_q = next + sq * rows;
  long long gain = 0;
  for (long long r = lane; r < rows; r += 32) {
    const int a = __ldg(mine + r), b = __ldg(theirs + r);
    gain += replaced_row_change(a, b, __ldg(nth_p + r), __ldg(next_p + r)) +
            replaced_row_change(b, a, __ldg(nth_q + r), __ldg(next_q + r));
  }
  for (int offset = 16; offset > 0; offset >>= 1) gain += __shfl_xor_sync(0xffffffffu, gain, offset);
  if (lane == 0) improvements[pair] = gain;
}

int status_of(cudaError_t error) {
  if (error == cudaSuccess) return SS_OK;
  if (error == cudaErrorMemoryAllocation) return SS_OUT_OF_MEMORY;
  if (error == cudaErrorNoDevice || error == cudaErrorInsufficientDriver) return SS_NO_DEVICE;
  return SS_DEVICE_ERROR;
}

/* Device buffers freed when they go out of scope. */
struct DeviceBuffer {
  void *pointer = nullptr;
  ~DeviceBuffer() { if (pointer) cudaFree(pointer); }
  cudaError_t upload(const void *host, size_t bytes) {
    cudaError_t error = cudaMalloc(&pointer, bytes ? bytes : 1);
    if (error == cudaSuccess && host && bytes) error = cudaMemcpy(pointer, host, bytes, cudaMemcpyHostToDevice);
    return error;
  }
  template <typename T> T *as() const { return static_cast<T *>(pointer); }
};

}  // namespace

struct ss_search {
  int *magnitudes = nullptr;  /* device (cols, rows) */
  int *subsets = nullptr;     /* device (subset_count, m) */
  int *partitions = nullptr;  /* device (partition_count, window / m) */
  long long rows = 0, cols = 0, partition_count = 0;
  int n = 0, m = 0, window = 0, subset_count = 0;
};

namespace {

/* Launches the stripe-group kernel for stripes of M columns. */
template <int M>
cudaError_t launch_stripe_groups(const ss_search *s, const int *permutation, const int *groups,
                                 long long group_count, long long *improvements, int *best) {
  const int stripes = s->window / M;
  const size_t shared = sizeof(long long) * s->subset_count;
  if (shared > 48 * 1024) {
    cudaError_t error = cudaFuncSetAttribute(
        stripe_groups_kernel<M>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared));
    if (error != cudaSuccess) return error;
  }
  const long long chunk = 1LL << 30;  // grid.x limit is 2^31 - 1
  for (long long first = 0; first < group_count; first += chunk) {
    const long long count = group_count - first < chunk ? group_count - first : chunk;
    stripe_groups_kernel<M><<<static_cast<unsigned>(count), kThreads, shared>>>(
        s->magnitudes, s->rows, s->n, s->subsets, s->subset_count, s->partitions,
        s->partition_count, s->window, permutation, groups + first * stripes, improvements + first,
        best + first);
  }
  return cudaGetLastError();
}

/* Launches the row-threshold and column-swap kernels for stripes of M columns. */
template <int M>
cudaError_t launch_column_swaps(const ss_search *s, const int *permutation, const int *positions,
                                long long position_count, int *nth, int *next,
                                long long *improvements) {
  const long long stripe_count = s->cols / M, pairs = position_count * s->cols;
  stripe_thresholds_kernel<M>
      <<<static_cast<unsigned>((stripe_count + kWarps - 1) / kWarps), kThreads>>>(
          s->magnitudes, s->rows, s->n, permutation, stripe_count, nth, next);
  column_swaps_kernel<<<static_cast<unsigned>((pairs + kWarps - 1) / kWarps), kThreads>>>(
      s->magnitudes, s->rows, M, s->cols, permutation, positions, position_count, nth, next,
      improvements);
  return cudaGetLastError();
}

}  // namespace

extern "C" {

int ss_abi_version(void) { return SS_ABI_VERSION; }
const char *ss_backend(void) { return "CUDA"; }

int ss_device_count(void) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

const char *ss_status_string(int status) {
  switch (status) {
    case SS_OK: return "success";
    case SS_INVALID_ARGUMENT: return "invalid argument (pattern, shape, index or magnitude out of range)";
    case SS_OUT_OF_MEMORY: return "out of GPU memory";
    case SS_NO_DEVICE: return "no CUDA GPU or driver available";
    case SS_DEVICE_ERROR: return "CUDA error";
    default: return "unknown status";
  }
}

void ss_search_destroy(ss_search *search) {
  if (!search) return;
  cudaFree(search->magnitudes);
  cudaFree(search->subsets);
  cudaFree(search->partitions);
  delete search;
}

int ss_search_create(const int32_t *magnitudes, int64_t rows, int64_t cols, int32_t n,
                     int32_t m, int32_t window, const int32_t *subsets, int32_t subset_count,
                     const int32_t *partitions, int64_t partition_count, ss_search **out) {
  int status = ss_check_create(magnitudes, rows, cols, n, m, window, subsets, subset_count,
                               partitions, partition_count, out);
  if (status != SS_OK) return status;
  const int stripes = window / m;
  if (ss_device_count() == 0) return SS_NO_DEVICE;

  ss_search *s = new ss_search;
  s->rows = rows;
  s->cols = cols;
  s->n = n;
  s->m = m;
  s->window = window;
  s->subset_count = window ? subset_count : 0;
  s->partition_count = window ? partition_count : 0;
  cudaError_t error = cudaMalloc(&s->magnitudes, sizeof(int) * rows * cols);
  if (error == cudaSuccess)
    error = cudaMemcpy(s->magnitudes, magnitudes, sizeof(int) * rows * cols, cudaMemcpyHostToDevice);
  if (window && error == cudaSuccess) error = cudaMalloc(&s->subsets, sizeof(int) * m * subset_count);
  if (window && error == cudaSuccess)
    error = cudaMemcpy(s->subsets, subsets, sizeof(int) * m * subset_count, cudaMemcpyHostToDevice);
  if (window && error == cudaSuccess)
    error = cudaMalloc(&s->partitions, sizeof(int) * stripes * partition_count);
  if (window && error == cudaSuccess)
    error = cudaMemcpy(s->partitions, partitions, sizeof(int) * stripes * partition_count,
                       cudaMemcpyHostToDevice);
  if (error != cudaSuccess) {
    ss_search_destroy(s);
    return status_of(error);
  }
  *out = s;
  return SS_OK;
}

int ss_stripe_groups(const ss_search *s, const int32_t *permutation,
                     const int32_t *groups, int64_t group_count,
                     int64_t *improvements, int32_t *best_partitions) {
  if (!s || !s->window || !permutation || !groups || group_count < 0 || !improvements || !best_partitions)
    return SS_INVALID_ARGUMENT;
  const int stripes = s->window / s->m;
  int status = ss_check_groups(permutation, s->cols, groups, group_count, stripes, s->cols / s->m);
  if (status != SS_OK) return status;
  if (group_count == 0) return SS_OK;

  DeviceBuffer d_permutation, d_groups, d_improvements, d_best;
  cudaError_t error = d_permutation.upload(permutation, sizeof(int) * s->cols);
  if (error == cudaSuccess) error = d_groups.upload(groups, sizeof(int) * stripes * group_count);
  if (error == cudaSuccess) error = d_improvements.upload(nullptr, sizeof(long long) * group_count);
  if (error == cudaSuccess) error = d_best.upload(nullptr, sizeof(int) * group_count);
  if (error != cudaSuccess) return status_of(error);

  const int *perm = d_permutation.as<int>(), *grp = d_groups.as<int>();
  long long *gains = d_improvements.as<long long>();
  int *best = d_best.as<int>();
  switch (s->m) {
    case 2: error = launch_stripe_groups<2>(s, perm, grp, group_count, gains, best); break;
    case 4: error = launch_stripe_groups<4>(s, perm, grp, group_count, gains, best); break;
    case 8: error = launch_stripe_groups<8>(s, perm, grp, group_count, gains, best); break;
    default: error = launch_stripe_groups<16>(s, perm, grp, group_count, gains, best);
  }
  if (error == cudaSuccess)
    error = cudaMemcpy(improvements, d_improvements.pointer, sizeof(long long) * group_count,
                       cudaMemcpyDeviceToHost);
  if (error == cudaSuccess)
    error = cudaMemcpy(best_partitions, d_best.pointer, sizeof(int) * group_count, cudaMemcpyDeviceToHost);
  return status_of(error);
}

int ss_column_swaps(const ss_search *s, const int32_t *permutation,
                    const int32_t *positions, int64_t position_count,
                    int64_t *improvements) {
  if (!s || !permutation || !positions || position_count < 0 || !improvements) return SS_INVALID_ARGUMENT;
  for (int64_t i = 0; i < position_count; ++i)
    if (positions[i] < 0 || positions[i] >= s->cols) return SS_INVALID_ARGUMENT;
  if (!ss_is_permutation(permutation, s->cols)) return SS_INVALID_ARGUMENT;
  if (position_count == 0) return SS_OK;

  const long long stripe_count = s->cols / s->m, pairs = position_count * s->cols;
  DeviceBuffer d_permutation, d_positions, d_nth, d_next, d_improvements;
  cudaError_t error = d_permutation.upload(permutation, sizeof(int) * s->cols);
  if (error == cudaSuccess) error = d_positions.upload(positions, sizeof(int) * position_count);
  if (error == cudaSuccess) error = d_nth.upload(nullptr, sizeof(int) * stripe_count * s->rows);
  if (error == cudaSuccess) error = d_next.upload(nullptr, sizeof(int) * stripe_count * s->rows);
  if (error == cudaSuccess) error = d_improvements.upload(nullptr, sizeof(long long) * pairs);
  if (error != cudaSuccess) return status_of(error);

  const int *perm = d_permutation.as<int>(), *pos = d_positions.as<int>();
  int *nth = d_nth.as<int>(), *next = d_next.as<int>();
  long long *gains = d_improvements.as<long long>();
  switch (s->m) {
    case 2: error = launch_column_swaps<2>(s, perm, pos, position_count, nth, next, gains); break;
    case 4: error = launch_column_swaps<4>(s, perm, pos, position_count, nth, next, gains); break;
    case 8: error = launch_column_swaps<8>(s, perm, pos, position_count, nth, next, gains); break;
    default: error = launch_column_swaps<16>(s, perm, pos, position_count, nth, next, gains);
  }
  if (error == cudaSuccess)
    error = cudaMemcpy(improvements, d_improvements.pointer, sizeof(long long) * pairs, cudaMemcpyDeviceToHost);
  return status_of(error);
}

}  // extern "C"
