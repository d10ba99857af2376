/*
 * structured_sparsity_checks.h: argument checks shared by the CPU (C) and
 * CUDA (C++ host code) implementations of structured_sparsity.h.
 */
#ifndef TF_ASP_STRUCTURED_SPARSITY_CHECKS_H_
#define TF_ASP_STRUCTURED_SPARSITY_CHECKS_H_

#include <stdlib.h>

#include "structured_sparsity.h"

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
                                  int32_t window, const int32_t *quads, int32_t quad_count,
                                  const int32_t *partitions, int64_t partition_count,
                                  void *out) {
  if (!magnitudes || !out || rows <= 0 || cols <= 0 || cols % 4) return SS_INVALID_ARGUMENT;
  if (window < 0 || window % 4 || window > cols || window > SS_MAX_WINDOW) return SS_INVALID_ARGUMENT;
  const int32_t stripes = window / 4;
  if (window && (!quads || !partitions || quad_count <= 0 || partition_count <= 0))
    return SS_INVALID_ARGUMENT;
  for (int64_t i = 0; i < rows * cols; ++i)
    if (magnitudes[i] < 0 || magnitudes[i] > SS_MAX_MAGNITUDE) return SS_INVALID_ARGUMENT;
  for (int64_t i = 0; window && i < (int64_t)quad_count * 4; ++i)
    if (quads[i] < 0 || quads[i] >= window) return SS_INVALID_ARGUMENT;
  for (int64_t i = 0; window && i < partition_count * stripes; ++i)
    if (partitions[i] < 0 || partitions[i] >= quad_count) return SS_INVALID_ARGUMENT;
  return SS_OK;
}

#endif /* TF_ASP_STRUCTURED_SPARSITY_CHECKS_H_ */
