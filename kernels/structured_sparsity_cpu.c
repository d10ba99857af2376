/*
 * structured_sparsity_cpu.c: the permutation-search kernels on the CPU.
 *
 * Implements structured_sparsity.h with OpenMP threads over stripe groups
 * (or swap candidates) and inner loops over rows that the compiler
 * vectorizes: columns are contiguous, and the n-of-m selection is a fixed
 * network of min/max operations with no branches (written out for 2:4; for
 * other patterns structured_sparsity_network.h's network runs over blocks
 * of rows). A column swap changes two stripes by one value a row, which each
 * stripe's n-th and (n+1)-th largest row values decide: those are found once
 * per stripe, and no stripe is rescored per swap.
 */
#include "structured_sparsity.h"
#include "structured_sparsity_checks.h"
#include "structured_sparsity_network.h"

#include <stdlib.h>
#include <string.h>

/* Below this many row-stripes a call runs on one thread: waking the others
 * costs more than it saves, and a thread descheduled by a busy machine would
 * hold up the whole call at the barrier. */
#define SS_PARALLEL_WORK (1 << 22)

struct ss_search {
  int32_t *magnitudes; /* (cols, rows) */
  int64_t rows;
  int64_t cols;
  int32_t n, m;        /* keep n of every m columns */
  int32_t window;
  int32_t subset_count;
  int32_t *subsets;    /* (subset_count, m) */
  int64_t partition_count;
  int32_t *partitions; /* (partition_count, window / m) */
  int32_t comparator_count;
  ss_comparator network[SS_MAX_COMPARATORS];      /* sums the n largest of m */
  int32_t sort_count;
  ss_comparator sort_network[SS_MAX_COMPARATORS]; /* sorts m */
};

static inline int32_t max32(int32_t a, int32_t b) { return a > b ? a : b; }
static inline int32_t min32(int32_t a, int32_t b) { return a < b ? a : b; }

/* The sum of the 2 largest of 4 values. */
static inline int32_t top2(int32_t a, int32_t b, int32_t c, int32_t d) {
  int32_t high_ab = max32(a, b), low_ab = min32(a, b);
  int32_t high_cd = max32(c, d), low_cd = min32(c, d);
  return max32(high_ab, high_cd) +
         max32(min32(high_ab, high_cd), max32(low_ab, low_cd));
}

/* Rows summed in int32 before widening: ROW_BLOCK * 2 * SS_MAX_MAGNITUDE
 * stays below 2^31, and the vectorized inner loop needs no 64-bit adds. */
#define ROW_BLOCK 128

/* What a 2:4 mask keeps of 4 columns, summed over rows. */
static int64_t quad_score(const int32_t *restrict a, const int32_t *restrict b,
                          const int32_t *restrict c, const int32_t *restrict d,
                          int64_t rows) {
  int64_t sum = 0;
  for (int64_t first = 0; first < rows; first += ROW_BLOCK) {
    const int64_t last = first + ROW_BLOCK < rows ? first + ROW_BLOCK : rows;
    int32_t block = 0;
    for (int64_t r = first; r < last; ++r) block += top2(a[r], b[r], c[r], d[r]);
    sum += block;
  }
  return sum;
}

/* Rows per block of the network: the wires of a block stay in L1 cache. */
#define NETWORK_BLOCK 128

/* Loads rows first.. of the m columns into wires (zeros past the last row)
 * and runs `count` comparators of `network` on them. */
static void run_network(const ss_comparator *network, int32_t count, int32_t m,
                        const int32_t *const *columns, int64_t first, int64_t rows,
                        int32_t wires[][NETWORK_BLOCK]) {
  const int64_t valid = rows - first < NETWORK_BLOCK ? rows - first : NETWORK_BLOCK;
  for (int32_t w = 0; w < m; ++w) {
    const int32_t *restrict from = columns[w] + first;
    if (valid == NETWORK_BLOCK) {
      for (int r = 0; r < NETWORK_BLOCK; ++r) wires[w][r] = from[r];
    } else {
      for (int r = 0; r < NETWORK_BLOCK; ++r) wires[w][r] = r < valid ? from[r] : 0;
    }
  }
  for (int32_t c = 0; c < count; ++c) {
    int32_t *restrict low = wires[network[c].low];
    int32_t *restrict high = wires[network[c].high];
    switch (network[c].keep) {
      case SS_KEEP_BOTH:
        for (int r = 0; r < NETWORK_BLOCK; ++r) {
          const int32_t a = low[r], b = high[r];
          low[r] = min32(a, b);
          high[r] = max32(a, b);
        }
        break;
      case SS_KEEP_MAX:
        for (int r = 0; r < NETWORK_BLOCK; ++r) high[r] = max32(low[r], high[r]);
        break;
      default:
        for (int r = 0; r < NETWORK_BLOCK; ++r) low[r] = min32(low[r], high[r]);
    }
  }
}

/* Sum over a block of the top n wires. Each row keeps at most 15 *
 * SS_MAX_MAGNITUDE < 2^26: a row's sum fits an int32, rows add in int64. */
static int64_t top_wires_sum(int32_t wires[][NETWORK_BLOCK], int32_t n, int32_t m) {
  int32_t kept[NETWORK_BLOCK] = {0};
  for (int32_t w = m - n; w < m; ++w)
    for (int r = 0; r < NETWORK_BLOCK; ++r) kept[r] += wires[w][r];
  int64_t sum = 0;
  for (int r = 0; r < NETWORK_BLOCK; ++r) sum += kept[r];
  return sum;
}

/* What an n:m mask keeps of m columns, summed over rows: the pruned network
 * runs on a block of rows at a time. */
static int64_t network_score(const ss_search *s, const int32_t *const *columns) {
  int32_t wires[SS_MAX_STRIPE][NETWORK_BLOCK];
  int64_t sum = 0;
  for (int64_t first = 0; first < s->rows; first += NETWORK_BLOCK) {
    run_network(s->network, s->comparator_count, s->m, columns, first, s->rows, wires);
    sum += top_wires_sum(wires, s->n, s->m);
  }
  return sum;
}

/* The score of m columns, and each row's n-th and (n+1)-th largest value
 * (the full sorting network puts them on wires m - n and m - n - 1). */
static int64_t stripe_thresholds(const ss_search *s, const int32_t *const *columns,
                                 int32_t *nth, int32_t *next) {
  int32_t wires[SS_MAX_STRIPE][NETWORK_BLOCK];
  int64_t sum = 0;
  for (int64_t first = 0; first < s->rows; first += NETWORK_BLOCK) {
    run_network(s->sort_network, s->sort_count, s->m, columns, first, s->rows, wires);
    sum += top_wires_sum(wires, s->n, s->m);
    const int64_t valid = s->rows - first < NETWORK_BLOCK ? s->rows - first : NETWORK_BLOCK;
    memcpy(nth + first, wires[s->m - s->n], sizeof(int32_t) * valid);
    memcpy(next + first, wires[s->m - s->n - 1], sizeof(int32_t) * valid);
  }
  return sum;
}

/* The change of a stripe's score, summed over rows, when its column `out`
 * leaves and `in` takes its place, from the stripe's row thresholds: a
 * leaving value among the n largest gives way to the (n+1)-th, and an
 * arriving value above the n-th largest of those left displaces it. */
static int64_t replacement_gain(const int32_t *restrict out, const int32_t *restrict in,
                                const int32_t *restrict nth, const int32_t *restrict next,
                                int64_t rows) {
  int64_t sum = 0;
  for (int64_t first = 0; first < rows; first += ROW_BLOCK) {
    const int64_t last = first + ROW_BLOCK < rows ? first + ROW_BLOCK : rows;
    int32_t block = 0; /* |change| <= SS_MAX_MAGNITUDE a row */
    for (int64_t r = first; r < last; ++r) {
      const int kept = out[r] >= nth[r];
      const int32_t threshold = kept ? next[r] : nth[r];
      block += (kept ? next[r] - out[r] : 0) + max32(in[r] - threshold, 0);
    }
    sum += block;
  }
  return sum;
}

/* What the search's mask keeps of the m columns `columns`, summed over rows. */
static inline int64_t stripe_score(const ss_search *s, const int32_t *const *columns) {
  if (s->n == 2 && s->m == 4)
    return quad_score(columns[0], columns[1], columns[2], columns[3], s->rows);
  return network_score(s, columns);
}

static const int32_t *column(const ss_search *s, int32_t index) {
  return s->magnitudes + (int64_t)index * s->rows;
}

int ss_abi_version(void) { return SS_ABI_VERSION; }
const char *ss_backend(void) { return "CPU"; }
int ss_device_count(void) { return 1; }

const char *ss_status_string(int status) {
  switch (status) {
    case SS_OK: return "success";
    case SS_INVALID_ARGUMENT: return "invalid argument (pattern, shape, index or magnitude out of range)";
    case SS_OUT_OF_MEMORY: return "out of memory";
    case SS_NO_DEVICE: return "no device available";
    case SS_DEVICE_ERROR: return "device error";
    default: return "unknown status";
  }
}

int ss_search_create(const int32_t *magnitudes, int64_t rows, int64_t cols, int32_t n,
                     int32_t m, int32_t window, const int32_t *subsets, int32_t subset_count,
                     const int32_t *partitions, int64_t partition_count, ss_search **out) {
  int status = ss_check_create(magnitudes, rows, cols, n, m, window, subsets, subset_count,
                               partitions, partition_count, out);
  if (status != SS_OK) return status;
  int32_t stripes = window / m;

  ss_search *s = calloc(1, sizeof *s);
  if (!s) return SS_OUT_OF_MEMORY;
  s->rows = rows;
  s->cols = cols;
  s->n = n;
  s->m = m;
  s->window = window;
  s->comparator_count = ss_top_network(n, m, s->network);
  s->sort_count = ss_sort_network(m, s->sort_network);
  s->magnitudes = malloc(sizeof(int32_t) * rows * cols);
  if (window) {
    s->subset_count = subset_count;
    s->partition_count = partition_count;
    s->subsets = malloc(sizeof(int32_t) * m * subset_count);
    s->partitions = malloc(sizeof(int32_t) * stripes * partition_count);
  }
  if (!s->magnitudes || (window && (!s->subsets || !s->partitions))) {
    ss_search_destroy(s);
    return SS_OUT_OF_MEMORY;
  }
  memcpy(s->magnitudes, magnitudes, sizeof(int32_t) * rows * cols);
  if (window) {
    memcpy(s->subsets, subsets, sizeof(int32_t) * m * subset_count);
    memcpy(s->partitions, partitions, sizeof(int32_t) * stripes * partition_count);
  }
  *out = s;
  return SS_OK;
}

void ss_search_destroy(ss_search *search) {
  if (!search) return;
  free(search->magnitudes);
  free(search->subsets);
  free(search->partitions);
  free(search);
}

/* Scores every partition of one group's window; writes the best. */
static void best_partition(const ss_search *s, const int32_t *window_columns,
                           int64_t *subset_scores, int64_t *improvement,
                           int32_t *best_index) {
  const int32_t stripes = s->window / s->m;
  if (s->n == 2 && s->m == 4) { /* its own loop: a per-subset dispatch cost 40% on 128 rows */
    for (int32_t q = 0; q < s->subset_count; ++q) {
      const int32_t *quad = s->subsets + 4 * q;
      subset_scores[q] = quad_score(column(s, window_columns[quad[0]]),
                                    column(s, window_columns[quad[1]]),
                                    column(s, window_columns[quad[2]]),
                                    column(s, window_columns[quad[3]]), s->rows);
    }
  } else {
    for (int32_t q = 0; q < s->subset_count; ++q) {
      const int32_t *subset = s->subsets + (int64_t)s->m * q;
      const int32_t *columns[SS_MAX_STRIPE];
      for (int32_t k = 0; k < s->m; ++k) columns[k] = column(s, window_columns[subset[k]]);
      subset_scores[q] = network_score(s, columns);
    }
  }
  int64_t identity = 0;
  for (int32_t k = 0; k < stripes; ++k) identity += subset_scores[s->partitions[k]];
  int64_t best = identity;
  int32_t best_p = 0;
  for (int64_t p = 1; p < s->partition_count; ++p) {
    const int32_t *partition = s->partitions + p * stripes;
    int64_t score = 0;
    for (int32_t k = 0; k < stripes; ++k) score += subset_scores[partition[k]];
    if (score > best) {
      best = score;
      best_p = (int32_t)p;
    }
  }
  *improvement = best - identity;
  *best_index = best_p;
}

int ss_stripe_groups(const ss_search *s, const int32_t *permutation,
                     const int32_t *groups, int64_t group_count,
                     int64_t *improvements, int32_t *best_partitions) {
  if (!s || !s->window || !permutation || !groups || group_count < 0 ||
      !improvements || !best_partitions)
    return SS_INVALID_ARGUMENT;
  const int32_t m = s->m, stripes = s->window / m;
  int status = ss_check_groups(permutation, s->cols, groups, group_count, stripes, s->cols / m);
  if (status != SS_OK) return status;

  int failed = 0;
  const int64_t work = group_count * s->subset_count * s->rows * m / 4;
#pragma omp parallel if (work > SS_PARALLEL_WORK)
  {
    int64_t *subset_scores = malloc(sizeof(int64_t) * s->subset_count);
    if (!subset_scores) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(dynamic, 4)
    for (int64_t g = 0; g < group_count; ++g) {
      if (!subset_scores) continue;
      int32_t window_columns[SS_MAX_WINDOW];
      for (int32_t p = 0; p < s->window; ++p)
        window_columns[p] = permutation[m * groups[g * stripes + p / m] + p % m];
      best_partition(s, window_columns, subset_scores, &improvements[g], &best_partitions[g]);
    }
    free(subset_scores);
  }
  return failed ? SS_OUT_OF_MEMORY : SS_OK;
}

int ss_column_swaps(const ss_search *s, const int32_t *permutation,
                    const int32_t *positions, int64_t position_count,
                    int64_t *improvements) {
  if (!s || !permutation || !positions || position_count < 0 || !improvements)
    return SS_INVALID_ARGUMENT;
  for (int64_t i = 0; i < position_count; ++i)
    if (positions[i] < 0 || positions[i] >= s->cols) return SS_INVALID_ARGUMENT;
  if (!ss_is_permutation(permutation, s->cols)) return SS_INVALID_ARGUMENT;

  /* A swap changes two stripes by one column each: each change follows from
   * that stripe's row thresholds, computed once per stripe. */
  const int32_t m = s->m;
  const int64_t cols = s->cols, rows = s->rows, stripe_count = cols / m;
  int32_t *nth = malloc(sizeof(int32_t) * stripe_count * rows);
  int32_t *next = malloc(sizeof(int32_t) * stripe_count * rows);
  if (!nth || !next) {
    free(nth);
    free(next);
    return SS_OUT_OF_MEMORY;
  }
  const int64_t work = (position_count * 2 + 1) * cols * rows / 4;
#pragma omp parallel for schedule(static) if (work > SS_PARALLEL_WORK)
  for (int64_t t = 0; t < stripe_count; ++t) {
    const int32_t *columns[SS_MAX_STRIPE];
    for (int32_t j = 0; j < m; ++j) columns[j] = column(s, permutation[m * t + j]);
    stripe_thresholds(s, columns, nth + t * rows, next + t * rows);
  }

#pragma omp parallel for schedule(dynamic, 8) if (work > SS_PARALLEL_WORK)
  for (int64_t task = 0; task < position_count * stripe_count; ++task) {
    const int64_t i = task / stripe_count, t = task % stripe_count;
    const int32_t p = positions[i];
    const int64_t sp = p / m;
    int64_t *out = improvements + i * cols + m * t;
    for (int32_t k = 0; k < m; ++k) {
      const int64_t q = m * t + k;
      const int32_t *mine = column(s, permutation[p]), *theirs = column(s, permutation[q]);
      out[k] = t == sp ? 0
                       : replacement_gain(mine, theirs, nth + sp * rows, next + sp * rows, rows) +
                             replacement_gain(theirs, mine, nth + t * rows, next + t * rows, rows);
    }
  }
  free(nth);
  free(next);
  return SS_OK;
}
