/* The product behind app.models.kernels.PanelLinear: y = x W^T + b for float32 on a CPU, with the
 * weight W [out, in] stored in panels of PANEL outputs: panels[p][k][j] = W[p * PANEL + j][k]
 * (the last panel zero-padded), so one panel is one contiguous stream of memory.
 *
 * A decoding step multiplies one row (or a few: side by side, a sweep, a class) by each weight, so
 * the product is bound by reading the weight. Each panel is read once per block of up to MAX_ROWS
 * rows, straight into PANEL / 8 vector accumulators per row; a thread computes whole panels.
 *
 * Every output is the sum over k = 0 .. in - 1 of W[o][k] x[k], added up in that order into one
 * accumulator lane, whatever the row count, the row's place in its block and the thread count: a
 * row's result is the same bits in any batch, on one thread or many (tests/test_kernels.py).
 *
 * Built by app/models/panels.py with the machine's C compiler (-O3 -march=native -fopenmp) and
 * loaded into the OpenMP runtime torch already uses.
 */
#include <omp.h>
#include <stddef.h>

#define PANEL 16
#define MAX_ROWS 6

typedef float vec8 __attribute__((vector_size(32), aligned(4)));

/* `rows` (1 .. MAX_ROWS) rows of x times one panel, into y[.][0 .. valid - 1]. */
static inline __attribute__((always_inline)) void panel_rows(const float *panel, const float *x, long in, int rows,
                                                             const float *bias, float *y, long out, int valid)
{
    vec8 acc[MAX_ROWS][PANEL / 8] = {{{0}}};
    for (long k = 0; k < in; k++) {
        vec8 low = *(const vec8 *)(panel + k * PANEL);
        vec8 high = *(const vec8 *)(panel + k * PANEL + 8);
        for (int i = 0; i < rows; i++) { /* a constant in each caller below, so fully unrolled */
            float xk = x[i * in + k];
            acc[i][0] += low * xk;
            acc[i][1] += high * xk;
        }
    }
    for (int i = 0; i < rows; i++) {
        float sums[PANEL];
        *(vec8 *)sums = acc[i][0];
        *(vec8 *)(sums + 8) = acc[i][1];
        for (int j = 0; j < valid; j++)
            y[i * out + j] = bias ? sums[j] + bias[j] : sums[j];
    }
}

#define ROWS(n)                                                                                          \
    static void rows_##n(const float *p, const float *x, long in, const float *b, float *y, long out, int v) \
    {                                                                                                    \
        panel_rows(p, x, in, n, b, y, out, v);                                                           \
    }
ROWS(1)
ROWS(2)
ROWS(3)
ROWS(4)
ROWS(5)
ROWS(6)

typedef void (*rows_fn)(const float *, const float *, long, const float *, float *, long, int);
static const rows_fn ROWS_OF[MAX_ROWS + 1] = {0, rows_1, rows_2, rows_3, rows_4, rows_5, rows_6};

/* y [rows, out] = x [rows, in] W^T + bias (bias may be NULL), on `threads` OpenMP threads. */
void panel_product(const float *panels, const float *x, const float *bias, float *y, long rows, long in, long out,
                   int threads)
{
    long count = (out + PANEL - 1) / PANEL;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (long p = 0; p < count; p++) {
        const float *panel = panels + (size_t)p * in * PANEL;
        const float *panel_bias = bias ? bias + p * PANEL : NULL;
        int valid = out - p * PANEL < PANEL ? (int)(out - p * PANEL) : PANEL;
        for (long r = 0; r < rows; r += MAX_ROWS) {
            int n = rows - r < MAX_ROWS ? (int)(rows - r) : MAX_ROWS;
            ROWS_OF[n](panel, x + r * in, in, panel_bias, y + r * out + p * PANEL, out, valid);
        }
    }
}

/* The calling thread's OpenMP thread count in the runtime this library is bound to:
 * app/models/panels.py checks that it follows torch's, i.e. that both share one runtime. */
int panel_max_threads(void) { return omp_get_max_threads(); }
