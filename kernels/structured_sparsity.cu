/*
 * structured_sparsity.cu: the permutation-search kernels on a CUDA GPU.
 *
 * Implements structured_sparsity.h. A search handle keeps the magnitudes and
 * the window's tables on the device; each call uploads the (small)
 * permutation and group list and downloads one result per group.
 *
 * ss_stripe_groups: one block per stripe group. Its warps score the window's
 * quads (lanes stride over rows, a warp shuffle sums them), then its threads
 * score the partitions from those quad scores and a block reduction keeps the
 * best, the lowest partition index among equals. Integer sums make the
 * result independent of the reduction order, hence equal to the CPU's.
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

__device__ __forceinline__ int top2(int a, int b, int c, int d) {
  int high_ab = max(a, b), low_ab = min(a, b);
  int high_cd = max(c, d), low_cd = min(c, d);
  return max(high_ab, high_cd) + max(min(high_ab, high_cd), max(low_ab, low_cd));
}

/* Sum over rows of top2 of 4 columns, by one warp; every lane gets it. */
__device__ long long warp_quad_score(const int *a, const int *b, const int *c,
                                     const int *d, long long rows, int lane) {
  long long sum = 0;
  for (long long r = lane; r < rows; r += 32) sum += top2(__ldg(a + r), __ldg(b + r), __ldg(c + r), __ldg(d + r));
  for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  return sum;
}

__global__ void stripe_groups_kernel(const int *magnitudes, long long rows,
                                     const int *quads, int quad_count,
                                     const int *partitions, long long partition_count,
                                     int window, const int *permutation,
                                     const int *groups, long long *improvements,
                                     int *best_partitions) {
  extern __shared__ long long quad_scores[];
  __shared__ int columns[kMaxWindow];
  __shared__ long long best_scores[kThreads];
  __shared__ int best_indices[kThreads];
  const long long g = blockIdx.x;
  const int stripes = window / 4, tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  if (tid < window) columns[tid] = permutation[4 * groups[g * stripes + tid / 4] + tid % 4];
  __syncthreads();

  for (int q = warp; q < quad_count; q += kWarps) {
    const int *quad = quads + 4 * q;
    long long score = warp_quad_score(magnitudes + (long long)columns[quad[0]] * rows,
                                      magnitudes + (long long)columns[quad[1]] * rows,
                                      magnitudes + (long long)columns[quad[2]] * rows,
                                      magnitudes + (long long)columns[quad[3]] * rows,
                                      rows, lane);
    if (lane == 0) quad_scores[q] = score;
  }
  __syncthreads();

  long long best = LLONG_MIN;
  int best_p = INT_MAX;
  for (long long p = tid; p < partition_count; p += kThreads) {
    const int *partition = partitions + p * stripes;
    long long score = 0;
    for (int k = 0; k < stripes; ++k) score += quad_scores[partition[k]];
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
    for (int k = 0; k < stripes; ++k) identity += quad_scores[partitions[k]];
    improvements[g] = best_scores[0] - identity;
    best_partitions[g] = best_indices[0];
  }
}

/* One warp per stripe: its current score. */
__global__ void stripe_scores_kernel(const int *magnitudes, long long rows,
                                     const int *permutation, long long stripe_count,
                                     long long *scores) {
  const long long t = (long long)blockIdx.x * kWarps + threadIdx.x / 32;
  if (t >= stripe_count) return;
  const int *c = permutation + 4 * t;
  long long score = warp_quad_score(magnitudes + (long long)c[0] * rows, magnitudes + (long long)c[1] * rows,
                                    magnitudes + (long long)c[2] * rows, magnitudes + (long long)c[3] * rows,
                                    rows, threadIdx.x % 32);
  if (threadIdx.x % 32 == 0) scores[t] = score;
}

/* One warp per (position, column) pair: the gain of swapping them. */
__global__ void column_swaps_kernel(const int *magnitudes, long long rows, long long cols,
                                    const int *permutation, const int *positions,
                                    long long position_count, const long long *stripe_scores,
                                    long long *improvements) {
  const long long pair = (long long)blockIdx.x * kWarps + threadIdx.x / 32;
  if (pair >= position_count * cols) return;
  const int lane = threadIdx.x % 32;
  const long long i = pair / cols, q = pair % cols;
  const int p = positions[i];
  const long long sp = p / 4, sq = q / 4;
  if (sp == sq) {
    if (lane == 0) improvements[pair] = 0;
    return;
  }
  const int *mine[4], *theirs[4];
  for (int j = 0; j < 4; ++j) {
    mine[j] = magnitudes + (long long)permutation[4 * sp + j] * rows;
    theirs[j] = magnitudes + (long long)permutation[4 * sq + j] * rows;
  }
  const int *moving_out = mine[p % 4];
  mine[p % 4] = theirs[q % 4];
  theirs[q % 4] = moving_out;
  long long gain = warp_quad_score(mine[0], mine[1], mine[2], mine[3], rows, lane) +
                   warp_quad_score(theirs[0], theirs[1], theirs[2], theirs[3], rows, lane) -
                   stripe_scores[sp] - stripe_scores[sq];
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
  int *quads = nullptr;       /* device (quad_count, 4) */
  int *partitions = nullptr;  /* device (partition_count, window / 4) */
  long long rows = 0, cols = 0, partition_count = 0;
  int window = 0, quad_count = 0;
};

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
    case SS_INVALID_ARGUMENT: return "invalid argument (shape, index or magnitude out of range)";
    case SS_OUT_OF_MEMORY: return "out of GPU memory";
    case SS_NO_DEVICE: return "no CUDA GPU or driver available";
    case SS_DEVICE_ERROR: return "CUDA error";
    default: return "unknown status";
  }
}

void ss_search_destroy(ss_search *search) {
  if (!search) return;
  cudaFree(search->magnitudes);
  cudaFree(search->quads);
  cudaFree(search->partitions);
  delete search;
}

int ss_search_create(const int32_t *magnitudes, int64_t rows, int64_t cols,
                     int32_t window, const int32_t *quads, int32_t quad_count,
                     const int32_t *partitions, int64_t partition_count,
                     ss_search **out) {
  int status = ss_check_create(magnitudes, rows, cols, window, quads, quad_count, partitions,
                               partition_count, out);
  if (status != SS_OK) return status;
  const int stripes = window / 4;
  if (ss_device_count() == 0) return SS_NO_DEVICE;

  ss_search *s = new ss_search;
  s->rows = rows;
  s->cols = cols;
  s->window = window;
  s->quad_count = window ? quad_count : 0;
  s->partition_count = window ? partition_count : 0;
  cudaError_t error = cudaMalloc(&s->magnitudes, sizeof(int) * rows * cols);
  if (error == cudaSuccess)
    error = cudaMemcpy(s->magnitudes, magnitudes, sizeof(int) * rows * cols, cudaMemcpyHostToDevice);
  if (window && error == cudaSuccess) error = cudaMalloc(&s->quads, sizeof(int) * 4 * quad_count);
  if (window && error == cudaSuccess)
    error = cudaMemcpy(s->quads, quads, sizeof(int) * 4 * quad_count, cudaMemcpyHostToDevice);
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
  const int stripes = s->window / 4;
  for (int64_t i = 0; i < group_count * stripes; ++i)
    if (groups[i] < 0 || groups[i] >= s->cols / 4) return SS_INVALID_ARGUMENT;
  if (!ss_is_permutation(permutation, s->cols)) return SS_INVALID_ARGUMENT;
  if (group_count == 0) return SS_OK;

  DeviceBuffer d_permutation, d_groups, d_improvements, d_best;
  cudaError_t error = d_permutation.upload(permutation, sizeof(int) * s->cols);
  if (error == cudaSuccess) error = d_groups.upload(groups, sizeof(int) * stripes * group_count);
  if (error == cudaSuccess) error = d_improvements.upload(nullptr, sizeof(long long) * group_count);
  if (error == cudaSuccess) error = d_best.upload(nullptr, sizeof(int) * group_count);
  if (error != cudaSuccess) return status_of(error);

  const size_t shared = sizeof(long long) * s->quad_count;
  if (shared > 48 * 1024) {
    error = cudaFuncSetAttribute(stripe_groups_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(shared));
    if (error != cudaSuccess) return status_of(error);
  }
  const long long chunk = 1LL << 30;  // grid.x limit is 2^31 - 1
  for (long long first = 0; first < group_count; first += chunk) {
    const long long count = group_count - first < chunk ? group_count - first : chunk;
    stripe_groups_kernel<<<static_cast<unsigned>(count), kThreads, shared>>>(
        s->magnitudes, s->rows, s->quads, s->quad_count, s->partitions, s->partition_count,
        s->window, d_permutation.as<int>(), d_groups.as<int>() + first * stripes,
        d_improvements.as<long long>() + first, d_best.as<int>() + first);
  }
  error = cudaGetLastError();
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

  const long long stripe_count = s->cols / 4, pairs = position_count * s->cols;
  DeviceBuffer d_permutation, d_positions, d_scores, d_improvements;
  cudaError_t error = d_permutation.upload(permutation, sizeof(int) * s->cols);
  if (error == cudaSuccess) error = d_positions.upload(positions, sizeof(int) * position_count);
  if (error == cudaSuccess) error = d_scores.upload(nullptr, sizeof(long long) * stripe_count);
  if (error == cudaSuccess) error = d_improvements.upload(nullptr, sizeof(long long) * pairs);
  if (error != cudaSuccess) return status_of(error);

  stripe_scores_kernel<<<static_cast<unsigned>((stripe_count + kWarps - 1) / kWarps), kThreads>>>(
      s->magnitudes, s->rows, d_permutation.as<int>(), stripe_count, d_scores.as<long long>());
  column_swaps_kernel<<<static_cast<unsigned>((pairs + kWarps - 1) / kWarps), kThreads>>>(
      s->magnitudes, s->rows, s->cols, d_permutation.as<int>(), d_positions.as<int>(),
      position_count, d_scores.as<long long>(), d_improvements.as<long long>());
  error = cudaGetLastError();
  if (error == cudaSuccess)
    error = cudaMemcpy(improvements, d_improvements.pointer, sizeof(long long) * pairs, cudaMemcpyDeviceToHost);
  return status_of(error);
}

}  // extern "C"
