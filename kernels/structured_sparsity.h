/*
 * structured_sparsity.h: the C ABI of tf_asp's permutation-search kernels.
 *
 * One ABI, two implementations: structured_sparsity_cpu.c (OpenMP) and
 * structured_sparsity.cu (CUDA). Python (tf_asp/search/native.py) loads
 * either through ctypes and cannot tell them apart.
 *
 * The matrix being permuted has `rows` rows (one per output value) and `cols`
 * columns (input channels). A search is made for one N:M pattern (keep n of
 * every m consecutive columns; m is 2, 4, 8 or 16): a *stripe* is m
 * consecutive columns of the permuted matrix, the unit an N:M mask works on.
 * Magnitudes arrive quantized to non-negative int32 (at most
 * SS_MAX_MAGNITUDE), column by column: element (r, c) is
 * magnitudes[c * rows + r]. Scores are exact int64 sums, so every
 * implementation, whatever its summation order, returns the same numbers and
 * therefore the same choices.
 *
 * The score of m columns is the sum over rows of the n largest of their m
 * magnitudes: what an N:M mask keeps of them.
 *
 * Every function returns SS_OK or an error status; nothing is written to an
 * output on error. There is no global state: a search's data lives in an
 * ss_search handle owned by the caller.
 */
#ifndef TF_ASP_STRUCTURED_SPARSITY_H_
#define TF_ASP_STRUCTURED_SPARSITY_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever a signature or a table layout changes. */
#define SS_ABI_VERSION 3
/* Largest magnitude accepted: a sum of 511 of them still fits an int32, so
 * implementations may add short runs of kept values in 32 bits (the CPU adds
 * 128 rows of 2:4's 2, or the n < 16 of one row). */
#define SS_MAX_MAGNITUDE (1 << 22)

enum ss_status {
  SS_OK = 0,
  SS_INVALID_ARGUMENT = 1,
  SS_OUT_OF_MEMORY = 2,
  SS_NO_DEVICE = 3,
  SS_DEVICE_ERROR = 4
};

typedef struct ss_search ss_search;

/* SS_ABI_VERSION of the compiled library. */
int ss_abi_version(void);
/* "CPU" or "CUDA". */
const char *ss_backend(void);
/* Devices this library can run on now: 1 for the CPU, the visible GPUs for
 * CUDA (0 without a GPU or driver). */
int ss_device_count(void);
/* A static, human-readable sentence for a status. */
const char *ss_status_string(int status);

/*
 * Copies the magnitudes (and, for stripe-group searches, the tables of a
 * window) into a new search handle for the pattern n:m.
 *
 * n, m: keep n of every m columns; m is 2, 4, 8 or 16, 1 <= n < m, and cols
 *   is a multiple of m.
 * window: columns per stripe group (a multiple of m, at most 32), or 0 for a
 *   handle used only with ss_column_swaps.
 * subsets: (subset_count, m) window positions: every m-subset of
 *   0..window-1 (the stripes a partition may use).
 * partitions: (partition_count, window / m) indices into subsets: every way
 *   to split the window into stripes, order ignored; partition 0 must be the
 *   identity (subsets holding positions 0..m-1, m..2m-1, ...).
 */
int ss_search_create(const int32_t *magnitudes, int64_t rows, int64_t cols, int32_t n,
                     int32_t m, int32_t window, const int32_t *subsets, int32_t subset_count,
                     const int32_t *partitions, int64_t partition_count, ss_search **out);
void ss_search_destroy(ss_search *search);

/*
 * For each stripe group, the best partition of its window and its gain.
 *
 * permutation: (cols) the current column order.
 * groups: (group_count, window / m) stripe indices; window position p of group
 *   g is column permutation[m * groups[g][p / m] + p % m].
 * improvements: (group_count) out: best partition score - identity score (>= 0).
 * best_partitions: (group_count) out: the first partition reaching the best.
 */
int ss_stripe_groups(const ss_search *search, const int32_t *permutation,
                     const int32_t *groups, int64_t group_count,
                     int64_t *improvements, int32_t *best_partitions);

/*
 * The gain of swapping two columns of the permuted matrix.
 *
 * positions: (position_count) column positions p.
 * improvements: (position_count, cols) out: entry (i, q) is the change of the
 *   total score when the columns at positions[i] and q trade places; 0 when
 *   they share a stripe.
 */
int ss_column_swaps(const ss_search *search, const int32_t *permutation,
                    const int32_t *positions, int64_t position_count,
                    int64_t *improvements);

#ifdef __cplusplus
}
#endif

#endif /* TF_ASP_STRUCTURED_SPARSITY_H_ */
