/*
 * structured_sparsity_cpu.c: the permutation-search kernels on the CPU.
 *
 * Implements structured_sparsity.h with OpenMP threads over stripe groups
 * (or swap candidates) and inner loops over rows that the compiler
 * vectorizes: columns are contiguous, and the 2-of-4 selection is a fixed
 * network of min/max operations with no branches.
 */
#include "structured_sparsity.h"
#include "structured_sparsity_checks.h"

#include <stdlib.h>
#include <string.h>

/* Below this many row-quads a call runs on one thread: waking the others
 * costs more than it saves, and a thread descheduled by a busy machine would
 * hold up the whole call at the barrier. */
#define SS_PARALLEL_WORK (1 << 22)

struct ss_search {
  int32_t *magnitudes; /* (cols, rows) */
  int64_t rows;
  int64_t cols;
  int32_t window;
  int32_t quad_count;
  int32_t *quads;      /* (quad_count, 4) */
  int64_t partition_count;
  int32_t *partitions; /* (partition_count, window / 4) */
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

static const int32_t *column(const ss_search *s, int32_t index) {
  return s->magnitudes + (int64_t)index * s->rows;
}

int ss_abi_version(void) { return SS_ABI_VERSION; }
const char *ss_backend(void) { return "CPU"; }
int ss_device_count(void) { return 1; }

const char *ss_status_string(int status) {
  switch (status) {
    case SS_OK: return "success";
    case SS_INVALID_ARGUMENT: return "invalid argument (shape, index or magnitude out of range)";
    case SS_OUT_OF_MEMORY: return "out of memory";
    case SS_NO_DEVICE: return "no device available";
    case SS_DEVICE_ERROR: return "device error";
    default: return "unknown status";
  }
}

int ss_search_create(const int32_t *magnitudes, int64_t rows, int64_t cols,
                     int32_t window, const int32_t *quads, int32_t quad_count,
                     const int32_t *partitions, int64_t partition_count,
                     ss_search **out) {
  int status = ss_check_create(magnitudes, rows, cols, window, quads, quad_count, partitions,
                               partition_count, out);
  if (status != SS_OK) return status;
  int32_t stripes = window / 4;

  ss_search *s = calloc(1, sizeof *s);
  if (!s) return SS_OUT_OF_MEMORY;
  s->rows = rows;
  s->cols = cols;
  s->window = window;
  s->magnitudes = malloc(sizeof(int32_t) * rows * cols);
  if (window) {
    s->quad_count = quad_count;
    s->partition_count = partition_count;
    s->quads = malloc(sizeof(int32_t) * 4 * quad_count);
    s->partitions = malloc(sizeof(int32_t) * stripes * partition_count);
  }
  if (!s->magnitudes || (window && (!s->quads || !s->partitions))) {
    ss_search_destroy(s);
    return SS_OUT_OF_MEMORY;
  }
  memcpy(s->magnitudes, magnitudes, sizeof(int32_t) * rows * cols);
  if (window) {
    memcpy(s->quads, quads, sizeof(int32_t) * 4 * quad_count);
    memcpy(s->partitions, partitions, sizeof(int32_t) * stripes * partition_count);
  }
  *out = s;
  return SS_OK;
}

void ss_search_destroy(ss_search *search) {
  if (!search) return;
  free(search->magnitudes);
  free(search->quads);
  free(search->partitions);
  free(search);
}

/* Scores every partition of one group's window; writes the best. */
static void best_partition(const ss_search *s, const int32_t *window_columns,
                           int64_t *quad_scores, int64_t *improvement,
                           int32_t *best_index) {
  const int32_t stripes = s->window / 4;
  for (int32_t q = 0; q < s->quad_count; ++q) {
    const int32_t *quad = s->quads + 4 * q;
    quad_scores[q] = quad_score(column(s, window_columns[quad[0]]),
                                column(s, window_columns[quad[1]]),
                                column(s, window_columns[quad[2]]),
                                column(s, window_columns[quad[3]]), s->rows);
  }
  int64_t identity = 0;
  for (int32_t k = 0; k < stripes; ++k) identity += quad_scores[s->partitions[k]];
  int64_t best = identity;
  int32_t best_p = 0;
  for (int64_t p = 1; p < s->partition_count; ++p) {
    const int32_t *partition = s->partitions + p * stripes;
    int64_t score = 0;
    for (int32_t k = 0; k < stripes; ++k) score += quad_scores[partition[k]];
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
  const int32_t stripes = s->window / 4;
  for (int64_t i = 0; i < group_count * stripes; ++i)
    if (groups[i] < 0 || groups[i] >= s->cols / 4) return SS_INVALID_ARGUMENT;
  if (!ss_is_permutation(permutation, s->cols)) return SS_INVALID_ARGUMENT;

  int failed = 0;
  const int64_t work = group_count * s->quad_count * s->rows;
#pragma omp parallel if (work > SS_PARALLEL_WORK)
  {
    int64_t *quad_scores = malloc(sizeof(int64_t) * s->quad_count);
    if (!quad_scores) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(dynamic, 4)
    for (int64_t g = 0; g < group_count; ++g) {
      if (!quad_scores) continue;
      int32_t window_columns[32];
      for (int32_t p = 0; p < s->window; ++p)
        window_columns[p] = permutation[4 * groups[g * stripes + p / 4] + p % 4];
      best_partition(s, window_columns, quad_scores, &improvements[g], &best_partitions[g]);
    }
    free(quad_scores);
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

  const int64_t cols = s->cols, stripe_count = cols / 4;
  int64_t *stripe_scores = malloc(sizeof(int64_t) * stripe_count);
  if (!stripe_scores) return SS_OUT_OF_MEMORY;
  const int64_t work = (position_count * 2 + 1) * cols * s->rows / 4;
#pragma omp parallel for schedule(static) if (work > SS_PARALLEL_WORK)
  for (int64_t t = 0; t < stripe_count; ++t) {
    const int32_t *c = permutation + 4 * t;
    stripe_scores[t] = quad_score(column(s, c[0]), column(s, c[1]),
                                  column(s, c[2]), column(s, c[3]), s->rows);
  }

#pragma omp parallel for schedule(dynamic, 8) if (work > SS_PARALLEL_WORK)
  for (int64_t task = 0; task < position_count * stripe_count; ++task) {
    const int64_t i = task / stripe_count, t = task % stripe_count;
    const int32_t p = positions[i];
    const int64_t sp = p / 4;
    int64_t *out = improvements + i * cols + 4 * t;
    if (t == sp) {
      out[0] = out[1] = out[2] = out[3] = 0;
      continue;
    }
    for (int32_t k = 0; k < 4; ++k) {
      const int32_t *mine[4], *theirs[4];
      for (int32_t j = 0; j < 4; ++j) {
        mine[j] = column(s, permutation[4 * sp + j]);
        theirs[j] = column(s, permutation[4 * t + j]);
      }
      const int32_t *moving_in = theirs[k], *moving_out = mine[p % 4];
      mine[p % 4] = moving_in;
      theirs[k] = moving_out;
      out[k] = quad_score(mine[0], mine[1], mine[2], mine[3], s->rows) +
               quad_score(theirs[0], theirs[1], theirs[2], theirs[3], s->rows) -
               stripe_scores[sp] - stripe_scores[t];
    }
  }
  free(stripe_scores);
  return SS_OK;
}
