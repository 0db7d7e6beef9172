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
 * Threads: a step makes hundreds of products of 30-1000 us each, too short for a thread that sleeps
 * between them (waking one costs 50-200 us) and too many for threads that spin all the time (on a
 * busy machine those hold the cores other work needs). So the library keeps its own helper threads,
 * started on first use. The calling thread posts a job (`parallel`: a product's panels, or the
 * attention heads of a decoding step in layer_step.c) and claims its pieces one at a time, as do
 * the helpers that are awake; it never waits for a helper that has not joined, so a helper that is
 * asleep or has lost its core costs nothing but its share of the work. A helper that finishes
 * watches for the next job for `spin_ns` (pausing, and yielding its core to any runnable
 * thread), then sleeps on a futex until a job wakes it.
 *
 * Subnormal floats (below 1.2e-38) take a slow path through the CPU: a steered decoding step met
 * enough of them to run 10% longer. Every computation of this library (on the calling thread for
 * the length of a call, on the helper threads always) flushes them to zero, so a result never
 * depends on which thread computed it, and values that small change nothing a float can show.
 *
 * Built by app/models/panels.py with the machine's C compiler (-O3 -march=native -pthread), with
 * layer_step.c into one library.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <math.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

/* Subnormals flushed to zero (FTZ) and read as zero (DAZ) on this thread; returns the setting to
 * give back to panel_flush_end. Elsewhere than x86 the setting is left as it is. */
unsigned panel_flush_begin(void)
{
#if defined(__x86_64__) || defined(__i386__)
    unsigned before = _mm_getcsr();
    _mm_setcsr(before | 0x8040);
    return before;
#else
    return 0;
#endif
}

void panel_flush_end(unsigned before)
{
#if defined(__x86_64__) || defined(__i386__)
    _mm_setcsr(before);
#else
    (void)before;
#endif
}

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

/* One panel of the product, for all rows. */
static void panel_all_rows(const float *panels, const float *x, const float *bias, float *y, long rows, long in,
                           long out, long p)
{
    const float *panel = panels + (size_t)p * in * PANEL;
    const float *panel_bias = bias ? bias + p * PANEL : NULL;
    int valid = out - p * PANEL < PANEL ? (int)(out - p * PANEL) : PANEL;
    for (long r = 0; r < rows; r += MAX_ROWS) {
        int n = rows - r < MAX_ROWS ? (int)(rows - r) : MAX_ROWS;
        ROWS_OF[n](panel, x + r * in, in, panel_bias, y + r * out + p * PANEL, out, valid);
    }
}

#define MAX_HELPERS 63

/* A piece of parallel work: task(args, i) for i = 0 .. count - 1, each i computed by one thread. */
typedef void (*task_fn)(const void *args, long index);

typedef struct {
    task_fn task;
    const void *args;
    long count;
    int helpers; /* helpers with an index below this may join */
} job_t;

static struct {
    pthread_mutex_t lock;       /* one job at a time uses the helpers; others run alone */
    job_t job;                  /* written only while no helper is inside it (joined == 0) */
    atomic_uint posted;         /* the number of the latest job (futex word) */
    atomic_uint open;           /* the number of the job helpers may still join, 0 when closed */
    atomic_int joined;          /* helpers inside the current job */
    atomic_int sleepers;        /* helpers waiting on the futex */
    atomic_long next;           /* the next index to claim */
    atomic_long spin_ns;        /* how long an idle helper watches before it sleeps */
    atomic_long helped;         /* indices (panels, attention heads) the helpers have computed */
    int started;                /* helpers running */
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .spin_ns = 200000};

static inline void relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static long claim(const job_t *job)
{
    long i, done = 0;
    for (; (i = atomic_fetch_add(&pool.next, 1)) < job->count; done++)
        job->task(job->args, i);
    return done;
}

/* Wait until a job later than `seen` is posted: watch for spin_ns, then sleep. */
static unsigned wait_for_job(unsigned seen)
{
    long until = now_ns() + atomic_load(&pool.spin_ns);
    for (unsigned i = 1;; i++) {
        unsigned posted = atomic_load(&pool.posted);
        if (posted != seen)
            return posted;
        if (i % 64 == 0) {
            if (now_ns() < until) {
                sched_yield(); /* a runnable thread that needs this core gets it */
                continue;
            }
            atomic_fetch_add(&pool.sleepers, 1);
            syscall(SYS_futex, &pool.posted, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
            atomic_fetch_sub(&pool.sleepers, 1);
            until = now_ns() + atomic_load(&pool.spin_ns);
        }
        relax();
    }
}

static void *helper(void *arg)
{
    int index = (int)(long)arg;
    unsigned seen = 0;
    panel_flush_begin(); /* for the thread's life: it runs nothing but this library's work */
    for (;;) {
        seen = wait_for_job(seen);
        atomic_fetch_add(&pool.joined, 1);
        if (atomic_load(&pool.open) == seen && index < pool.job.helpers)
            atomic_fetch_add(&pool.helped, claim(&pool.job));
        atomic_fetch_sub(&pool.joined, 1);
    }
    return NULL;
}

/* In a child made by fork() the helpers do not exist: start afresh. */
static void after_fork_in_child(void)
{
    pthread_mutex_init(&pool.lock, NULL);
    pool.started = 0;
    atomic_store(&pool.joined, 0);
    atomic_store(&pool.sleepers, 0);
    atomic_store(&pool.open, 0);
}

static int start_helpers(int wanted)
{
    static int registered;
    if (!registered)
        registered = pthread_atfork(NULL, NULL, after_fork_in_child) == 0;
    while (pool.started < wanted) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&thread, &attr, helper, (void *)(long)pool.started);
        pthread_attr_destroy(&attr);
        if (failed)
            break;
        pool.started++;
    }
    return pool.started;
}

/* task(args, i) for i = 0 .. count - 1 on the calling thread and up to threads - 1 helpers. */
void parallel(task_fn task, const void *args, long count, int threads)
{
    int helpers = threads - 1 < MAX_HELPERS ? threads - 1 : MAX_HELPERS;
    if (helpers < 1 || count < 2 || pthread_mutex_trylock(&pool.lock) != 0) {
        for (long i = 0; i < count; i++)
            task(args, i);
        return;
    }
    helpers = start_helpers(helpers) < helpers ? pool.started : helpers;
    pool.job = (job_t){task, args, count, helpers};
    atomic_store(&pool.next, 0);
    unsigned number = atomic_load(&pool.posted) + 1;
    if (number == 0)
        number = 1; /* 0 means closed */
    atomic_store(&pool.open, number);
    atomic_store(&pool.posted, number);
    if (atomic_load(&pool.sleepers) > 0)
        syscall(SYS_futex, &pool.posted, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
    claim(&pool.job);
    atomic_store(&pool.open, 0);
    for (unsigned i = 1; atomic_load(&pool.joined) > 0; i++) /* a joined helper is at most one index from done */
        if (i % 64 == 0)
            sched_yield();
        else
            relax();
    pthread_mutex_unlock(&pool.lock);
}

typedef struct {
    const float *panels, *x, *bias;
    float *y;
    long rows, in, out;
} product_t;

static void product_panel(const void *args, long p)
{
    const product_t *a = args;
    panel_all_rows(a->panels, a->x, a->bias, a->y, a->rows, a->in, a->out, p);
}

/* y [rows, out] = x [rows, in] W^T + bias (bias may be NULL), on the calling thread and up to
 * threads - 1 helpers. */
void panel_product(const float *panels, const float *x, const float *bias, float *y, long rows, long in, long out,
                   int threads)
{
    product_t args = {panels, x, bias, y, rows, in, out};
    unsigned before = panel_flush_begin();
    parallel(product_panel, &args, (out + PANEL - 1) / PANEL, threads);
    panel_flush_end(before);
}

/* How long an idle helper watches for the next product before it sleeps, in nanoseconds. */
void panel_set_spin_ns(long spin_ns) { atomic_store(&pool.spin_ns, spin_ns < 0 ? 0 : spin_ns); }

/* Helper threads started so far in this process, and the indices they have computed (tests, the bench). */
int panel_helpers(void) { return pool.started; }
long panel_helped(void) { return atomic_load(&pool.helped); }

/* The RMS norm of a Llama-family decoder layer, y = weight * (x * (1 / sqrt(mean(x^2) + eps))), row by
 * row on the calling thread: torch computes it in seven ops of a few microseconds each, 61 times a
 * step. The squares are summed in double, in four fixed lanes, so a row's result does not depend
 * on the other rows. */
void rms_norm(const float *x, const float *weight, float *y, long rows, long width, float eps)
{
    unsigned before = panel_flush_begin();
    for (long r = 0; r < rows; r++) {
        const float *row = x + r * width;
        double lanes[4] = {0, 0, 0, 0};
        long k = 0;
        for (; k + 4 <= width; k += 4)
            for (int j = 0; j < 4; j++)
                lanes[j] += (double)row[k + j] * row[k + j];
        for (; k < width; k++)
            lanes[0] += (double)row[k] * row[k];
        float scale = 1.0f / sqrtf((float)((lanes[0] + lanes[1] + lanes[2] + lanes[3]) / (double)width) + eps);
        float *out = y + r * width;
        for (k = 0; k < width; k++)
            out[k] = weight[k] * (row[k] * scale);
    }
    panel_flush_end(before);
}
