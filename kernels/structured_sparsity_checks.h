/*
 * structured_sparsity_checks.h: argument checks shared by the CPU (C) and
 * CUDA (C++ host code) implementations of structured_sparsity.h.
 */
#ifndef TF_ASP_STRUCTURED_SPARSITY_CHECKS_H_
#define TF_ASP_STRUCTURED_SPARSITY_CHECKS_H_

#include <stdlib.h>

#include "structured_sparsity.h"
#include "structured_sparsity_network.h"

#define SS_MAX_WINDOW 32

/* 1 if `permutation` holds each of 0..cols-1 exactly once. */
static inline int ss_is_permutation(const int32_t *permutation, int64_t cols) {
  unsigned char *seen = (unsigned char *)calloc((size_t)cols, 1);
  int ok = seen != NULL;
  for (int64_t i = 0; ok && i < cols; ++i) {
    int32_t c = permutation[i];
    ok = c >= 0 && c < cols && !seen[c];
    if (ok) seen[c] = 1;
  }
  free(seen);
  return ok;
}

/* SS_OK if ss_search_create's arguments are in range, else SS_INVALID_ARGUMENT. */
static inline int ss_check_create(const int32_t *magnitudes, int64_t rows, int64_t cols,
                                  int32_t n, int32_t m, int32_t window,
                                  const int32_t *subsets, int32_t subset_count,
                                  const int32_t *partitions, int64_t partition_count,
                                  void *out) {
  if (!ss_is_pattern(n, m)) return SS_INVALID_ARGUMENT;
  if (!magnitudes || !out || rows <= 0 || cols <= 0 || cols % m) return SS_INVALID_ARGUMENT;
  if (window < 0 || window % m || window > cols || window > SS_MAX_WINDOW) return SS_INVALID_ARGUMENT;
  const int32_t stripes = window / m;
  if (window && (!subsets || !partitions || subset_count <= 0 || partition_count <= 0))
    return SS_INVALID_ARGUMENT;
  for (int64_t i = 0; i < rows * cols; ++i)
    if (magnitudes[i] < 0 || magnitudes[i] > SS_MAX_MAGNITUDE) return SS_INVALID_ARGUMENT;
  for (int64_t i = 0; window && i < (int64_t)subset_count * m; ++i)
    if (subsets[i] < 0 || subsets[i] >= window) return SS_INVALID_ARGUMENT;
  for (int64_t i = 0; window && i < partition_count * stripes; ++i)
    if (partitions[i] < 0 || partitions[i] >= subset_count) return SS_INVALID_ARGUMENT;
  return SS_OK;
}

/* SS_OK if the stripe indices of `count` groups of `stripes` are below
 * `stripe_count` and `permutation` is one of 0..cols-1. */
static inline int ss_check_groups(const int32_t *permutation, int64_t cols,
                                  const int32_t *groups, int64_t count, int32_t stripes,
                                  int64_t stripe_count) {
  for (int64_t i = 0; i < count * stripes; ++i)
    if (groups[i] < 0 || groups[i] >= stripe_count) return SS_INVALID_ARGUMENT;
  return ss_is_permutation(permutation, cols) ? SS_OK : SS_INVALID_ARGUMENT;
}

#endif /* TF_ASP_STRUCTURED_SPARSITY_CHECKS_H_ */
