/* One decoding step of a Llama-family decoder layer in one call (app.models.layer_step): for each
 * of `rows` rows with one new position,
 *
 *     h   = hidden + o_proj(attention(rotary(q), rotary(k), v))   where q, k, v = qkv(norm_in(hidden))
 *     out = h + down(silu(gate(norm_post(h))) * up(norm_post(h)))
 *
 * with the new key and value written into the cache. transformers spends about 25 tensor
 * operations on this, a few microseconds of dispatch each, around four products; here the products
 * are the panel products of panels.c and everything between them is a loop over a few hundred
 * floats.
 *
 * Every row is computed on its own, in an order that does not depend on the other rows nor on the
 * thread count: a row's result is the same bits in any batch. The rotary embedding and the residual
 * sums round as torch's do (products and sums, no fused multiply-add: the same bits); the attention
 * (softmax in one pass over the keys, in order) and the SiLU (libm's expf) may differ from torch's
 * in the last bits.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef void (*task_fn)(const void *args, long index);
void parallel(task_fn task, const void *args, long count, int threads);
void panel_product(const float *panels, const float *x, const float *bias, float *y, long rows, long in, long out,
                   int threads);
void rms_norm(const float *x, const float *weight, float *y, long rows, long width, float eps);
unsigned panel_flush_begin(void);
void panel_flush_end(unsigned before);

typedef float vec8 __attribute__((vector_size(32), aligned(4)));

/* A decoder layer's weights (panels as in panels.c; a bias may be NULL) and shape. */
typedef struct {
    const float *input_norm, *post_norm; /* [width] */
    float input_eps, post_eps;
    const float *qkv, *qkv_bias;         /* q, k and v end to end: (heads + 2 kv_heads) head_dim outputs */
    const float *o, *o_bias;             /* heads head_dim -> width */
    const float *gate_up, *gate_up_bias; /* gate and up end to end: 2 middle outputs */
    const float *down, *down_bias;       /* middle -> width */
    long width, heads, kv_heads, head_dim, middle;
    float scaling;
} layer_t;

/* The rotary embedding of one head in place: x * cos + rotate_half(x) * sin, as transformers writes
 * it, rounded after each product and the sum (no contraction into fused multiply-adds). */
__attribute__((optimize("fp-contract=off"))) static void rotate(float *x, const float *cos, const float *sin, long size,
                                                                 float *scratch)
{
    long half = size / 2;
    for (long j = 0; j < size; j++) {
        float turned = j < half ? -x[j + half] : x[j - half];
        float a = x[j] * cos[j];
        float b = turned * sin[j];
        scratch[j] = a + b;
    }
    memcpy(x, scratch, (size_t)size * sizeof(float));
}

__attribute__((optimize("fp-contract=off"))) static void add(float *y, const float *a, const float *b, long n)
{
    for (long i = 0; i < n; i++)
        y[i] = a[i] + b[i];
}

static float dot(const float *a, const float *b, long size) /* size a multiple of 8; fixed lanes */
{
    vec8 acc = {0};
    for (long d = 0; d < size; d += 8)
        acc += *(const vec8 *)(a + d) * *(const vec8 *)(b + d);
    float sum = 0;
    for (int j = 0; j < 8; j++)
        sum += acc[j];
    return sum;
}

typedef struct {
    const layer_t *layer;
    const float *qkv;           /* [rows, qkv outputs], q and k rotated */
    const float *keys, *values; /* [rows, kv_heads, capacity, head_dim] */
    const unsigned char *mask;  /* [rows, length], or NULL */
    long capacity, length;      /* length: keys to attend to, the new one included */
    float *scores;              /* [rows heads, length] */
    float *out;                 /* [rows, heads head_dim] */
} attention_t;

/* One query head of one row: softmax(q k^T scaling) v over the row's unmasked keys, in order. */
static void attend(const void *args, long unit)
{
    const attention_t *a = args;
    const layer_t *L = a->layer;
    long size = L->head_dim, heads = L->heads, kv_heads = L->kv_heads;
    long row = unit / heads, head = unit % heads, group = head / (heads / kv_heads);
    long n = a->length;
    const float *q = a->qkv + row * (heads + 2 * kv_heads) * size + head * size;
    const float *keys = a->keys + (row * kv_heads + group) * a->capacity * size;
    const float *values = a->values + (row * kv_heads + group) * a->capacity * size;
    const unsigned char *mask = a->mask ? a->mask + row * n : NULL;
    float *scores = a->scores + unit * n;
    float *out = a->out + row * heads * size + head * size;
    float best = -INFINITY;
    for (long t = 0; t < n; t++) {
        if (mask && !mask[t])
            continue;
        scores[t] = dot(q, keys + t * size, size) * L->scaling;
        if (scores[t] > best)
            best = scores[t];
    }
    memset(out, 0, (size_t)size * sizeof(float));
    if (best == -INFINITY) /* no key to attend to: zeros, not NaN */
        return;
    float total = 0;
    for (long t = 0; t < n; t++) {
        if (mask && !mask[t])
            continue;
        float weight = expf(scores[t] - best);
        total += weight;
        const float *value = values + t * size;
        for (long d = 0; d < size; d++)
            out[d] += weight * value[d];
    }
    float inverse = 1.0f / total;
    for (long d = 0; d < size; d++)
        out[d] *= inverse;
}

/* The step (module docstring). hidden, out: [rows, width]; cos, sin: [rows, head_dim] for the new
 * position; keys, values: [rows, kv_heads, capacity, head_dim] with `length` positions filled, the
 * new key and value written at index `length`; mask: [rows, length + 1], nonzero where a row
 * attends, or NULL for every key. Returns 0, or -1 when scratch memory cannot be had (nothing
 * written). */
int layer_step(const layer_t *L, const float *hidden, float *out, long rows, const float *cos, const float *sin,
               float *keys, float *values, long capacity, long length, const unsigned char *mask, int threads)
{
    long size = L->head_dim, width = L->width, middle = L->middle;
    long q_out = L->heads * size, kv_out = L->kv_heads * size, qkv_out = q_out + 2 * kv_out;
    long n = length + 1;
    size_t floats = (size_t)rows * (width + qkv_out + q_out + width + 3 * middle) + (size_t)rows * L->heads * n + size;
    float *scratch = malloc(floats * sizeof(float));
    if (!scratch)
        return -1;
    unsigned before = panel_flush_begin(); /* subnormals as zeros, as everywhere in this library */
    float *normed = scratch, *qkv = normed + rows * width, *attended = qkv + rows * qkv_out;
    float *h = attended + rows * q_out, *gate_up = h + rows * width, *acted = gate_up + rows * 2 * middle;
    float *scores = acted + rows * middle, *turn = scores + rows * L->heads * n;

    rms_norm(hidden, L->input_norm, normed, rows, width, L->input_eps);
    panel_product(L->qkv, normed, L->qkv_bias, qkv, rows, width, qkv_out, threads);
    for (long r = 0; r < rows; r++) {
        float *row = qkv + r * qkv_out;
        for (long head = 0; head < L->heads + L->kv_heads; head++) /* q's heads, then k's */
            rotate(row + head * size, cos + r * size, sin + r * size, size, turn);
        for (long group = 0; group < L->kv_heads; group++) {
            size_t at = ((size_t)(r * L->kv_heads + group) * capacity + length) * size;
            memcpy(keys + at, row + q_out + group * size, (size_t)size * sizeof(float));
            memcpy(values + at, row + q_out + kv_out + group * size, (size_t)size * sizeof(float));
        }
    }
    attention_t attention = {L, qkv, keys, values, mask, capacity, n, scores, attended};
    parallel(attend, &attention, rows * L->heads, threads);
    panel_product(L->o, attended, L->o_bias, h, rows, q_out, width, threads);
    add(h, hidden, h, rows * width);

    rms_norm(h, L->post_norm, normed, rows, width, L->post_eps);
    panel_product(L->gate_up, normed, L->gate_up_bias, gate_up, rows, width, 2 * middle, threads);
    for (long r = 0; r < rows; r++) {
        const float *gate = gate_up + r * 2 * middle, *up = gate + middle;
        float *act = acted + r * middle;
        for (long i = 0; i < middle; i++)
            act[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
    }
    panel_product(L->down, acted, L->down_bias, out, rows, middle, width, threads);
    add(out, h, out, rows * width);
    free(scratch);
    panel_flush_end(before);
    return 0;
}
