/*
 * structured_sparsity_network.h: the comparator networks that sort m values
 * and sum the n largest of them (m a power of two up to 16), shared by the
 * CPU (C) and CUDA (C++ host code) implementations of structured_sparsity.h.
 *
 * ss_sort_network() writes Batcher's odd-even merge sort for m wires (the
 * smallest value ends on wire 0). ss_top_network() prunes it to what the sum
 * of the top n wires needs: a comparator none of whose outputs is read
 * again is dropped, one with a single output read keeps only that min or
 * max, and one that only swaps two values that are both summed and never
 * compared again is dropped too. 2:4 needs 8 min/max operations, 1:m only
 * m - 1 maxima, 4:8 30 of the full network's 38.
 *
 *   ss_comparator network[SS_MAX_COMPARATORS];
 *   int count = ss_top_network(2, 8, network);
 *   for (int c = 0; c < count; ++c) apply network[c] to wires v[0..7];
 *   sum = v[6] + v[7];  // the n largest end on wires m - n .. m - 1
 */
#ifndef TF_ASP_STRUCTURED_SPARSITY_NETWORK_H_
#define TF_ASP_STRUCTURED_SPARSITY_NETWORK_H_

#define SS_MAX_STRIPE 16
/* Batcher's network for 16 wires has 63 comparators. */
#define SS_MAX_COMPARATORS 64

enum ss_keep { SS_KEEP_MIN = 1, SS_KEEP_MAX = 2, SS_KEEP_BOTH = 3 };

/* Compares wires low < high: afterwards `low` holds the smaller value and
 * `high` the larger, of which only those in `keep` are computed. */
typedef struct {
  unsigned char low, high, keep;
} ss_comparator;

/* 1 if m is 2, 4, 8 or 16 and 1 <= n < m. */
static inline int ss_is_pattern(int n, int m) {
  return (m == 2 || m == 4 || m == 8 || m == 16) && n >= 1 && n < m;
}

/* Writes Batcher's odd-even merge sort for m (2, 4, 8 or 16) wires in
 * execution order; returns its length. */
static inline int ss_sort_network(int m, ss_comparator *out) {
  int count = 0;
  for (int p = 1; p < m; p *= 2)
    for (int k = p; k >= 1; k /= 2)
      for (int j = k % p; j + k < m; j += 2 * k)
        for (int i = 0; i < k && i + j + k < m; ++i)
          if ((i + j) / (2 * p) == (i + j + k) / (2 * p)) {
            ss_comparator c = {(unsigned char)(i + j), (unsigned char)(i + j + k), SS_KEEP_BOTH};
            out[count++] = c;
          }
  return count;
}

/* Writes the pruned network for "sum of the n largest of m" (a valid
 * pattern) in execution order; returns its length. */
static inline int ss_top_network(int n, int m, ss_comparator *out) {
  ss_comparator full[SS_MAX_COMPARATORS];
  const int count = ss_sort_network(m, full);

  /* Backwards: `needed` wires hold a value still read (by a kept comparator
   * or the final sum); `settled` wires are compared no more. */
  unsigned char needed[SS_MAX_STRIPE], settled[SS_MAX_STRIPE];
  for (int w = 0; w < m; ++w) {
    needed[w] = w >= m - n;
    settled[w] = 1;
  }
  int kept = 0;
  ss_comparator reversed[SS_MAX_COMPARATORS];
  for (int c = count - 1; c >= 0; --c) {
    const int low = full[c].low, high = full[c].high;
    const int keep = (needed[low] ? SS_KEEP_MIN : 0) | (needed[high] ? SS_KEEP_MAX : 0);
    if (keep == 0) continue;
    if (keep == SS_KEEP_BOTH && settled[low] && settled[high]) continue; /* both summed */
    ss_comparator pruned = {(unsigned char)low, (unsigned char)high, (unsigned char)keep};
    reversed[kept++] = pruned;
    needed[low] = needed[high] = 1;
    settled[low] = settled[high] = 0;
  }
  for (int c = 0; c < kept; ++c) out[c] = reversed[kept - 1 - c];
  return kept;
}

#endif /* TF_ASP_STRUCTURED_SPARSITY_NETWORK_H_ */
