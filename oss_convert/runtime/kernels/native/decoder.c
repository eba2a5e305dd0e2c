/* A decode step's blocks on one token, around the batched products (batch.c).
 *
 * One token's experts (a decode step's MoE block after routing), around their batched products:
 * the elementwise operations of runtime/model/moe.py (mix_experts, swiglu_halves) on one token, each the
 * one correctly rounded float operation torch does, in torch's order. All but the sigmoid, which
 * the caller (oss_moe_experts) runs between the two calls.
 *
 * The chosen experts come in ascending id order (mix_experts'), ids[i] for the biases' rows; the
 * products' arrays (formats, ws, scales_of, q8) hold `parts` matrices per expert: 1 (HF's rows,
 * gate and up interleaved) or 2 (GGUF's gate rows, then its up rows). Both return 0, -1 for a
 * product the kernels cannot take, -2 when out of memory.
 */

#include "kernels.h"

/* h = x @ W1[e]^T + b1[e] (b1 [experts, 2 * inter], interleaved like HF's rows); writes, each
 * [count, inter]: gate = min(h_gate, limit), up1 = clamp(h_up, -limit, limit) + 1, and
 * scaled = alpha * gate, the sigmoid's argument */
int oss_moe_gate_up(int count, int parts, const int *formats, const uint8_t *const *ws, const uint8_t *const *scales_of,
                    const int *q8, int64_t inter, int64_t hidden, const float *x, const float *b1, const int64_t *ids,
                    float limit, float alpha, float *gate, float *up1, float *scaled, int threads) {
    if (count <= 0 || (parts != 1 && parts != 2)) return -1;
    int products = count * parts;
    int64_t *ns = malloc(sizeof(int64_t) * (size_t)products), *ks = malloc(sizeof(int64_t) * (size_t)products);
    const float **xs = malloc(sizeof(float *) * (size_t)products);
    float **ys = malloc(sizeof(float *) * (size_t)products);
    float *interleaved = parts == 1 ? malloc(sizeof(float) * (size_t)(count * 2 * inter)) : NULL;
    int status = ns == NULL || ks == NULL || xs == NULL || ys == NULL || (parts == 1 && interleaved == NULL) ? -2 : 0;
    for (int i = 0; i < count && status == 0; i++)
        for (int p = 0; p < parts; p++) {
            int j = i * parts + p;
            ns[j] = 2 * inter / parts;
            ks[j] = hidden;
            xs[j] = x;
            ys[j] = parts == 1 ? interleaved + i * 2 * inter : (p == 0 ? gate : up1) + i * inter;
        }
    if (status == 0)
        status = oss_matmul_batch(products, formats, ws, scales_of, ns, ks, (const float *const *)xs, ys, q8, 1, threads);
    for (int i = 0; i < count && status == 0; i++) {
        const float *bias = b1 + ids[i] * 2 * inter;
        for (int64_t j = 0; j < inter; j++) {
            int64_t at = i * inter + j;
            float h_gate = (parts == 1 ? interleaved[2 * at] : gate[at]) + bias[2 * j];
            float h_up = (parts == 1 ? interleaved[2 * at + 1] : up1[at]) + bias[2 * j + 1];
            float g = h_gate > limit ? limit : h_gate;  /* (a NaN stays NaN, as in torch's clamp) */
            float u = h_up < -limit ? -limit : h_up > limit ? limit : h_up;
            gate[at] = g;
            up1[at] = u + 1.f;
            scaled[at] = g * alpha;
        }
    }
    free(ns);
    free(ks);
    free(xs);
    free(ys);
    free(interleaved);
    return status;
}

/* a = gate * sigmoid * up1 (into gate), y_i = a_i @ W2[e]^T, and
 * out = 0 + (y_0 + b2[e_0]) * weights[0] + (y_1 + b2[e_1]) * weights[1] + ..., added in order
 * (b2 [experts, hidden]; out [hidden]) */
int oss_moe_down(int count, const int *formats, const uint8_t *const *ws, const uint8_t *const *scales_of, const int *q8,
                 int64_t hidden, int64_t inter, float *gate, const float *sigmoid, const float *up1, const float *b2,
                 const int64_t *ids, const float *weights, float *out, int threads) {
    if (count <= 0) return -1;
    for (int64_t at = 0; at < count * inter; at++) gate[at] = gate[at] * sigmoid[at] * up1[at];
    int64_t *ns = malloc(sizeof(int64_t) * (size_t)count), *ks = malloc(sizeof(int64_t) * (size_t)count);
    const float **xs = malloc(sizeof(float *) * (size_t)count);
    float **ys = malloc(sizeof(float *) * (size_t)count);
    float *y = malloc(sizeof(float) * (size_t)(count * hidden));
    int status = ns == NULL || ks == NULL || xs == NULL || ys == NULL || y == NULL ? -2 : 0;
    for (int i = 0; i < count && status == 0; i++) {
        ns[i] = hidden;
        ks[i] = inter;
        xs[i] = gate + i * inter;
        ys[i] = y + i * hidden;
    }
    if (status == 0)
        status = oss_matmul_batch(count, formats, ws, scales_of, ns, ks, (const float *const *)xs, ys, q8, 1, threads);
    if (status == 0) {
        for (int64_t j = 0; j < hidden; j++) out[j] = 0.f;
        for (int i = 0; i < count; i++) {
            const float *bias = b2 + ids[i] * hidden;
            for (int64_t j = 0; j < hidden; j++) out[j] = out[j] + (y[i * hidden + j] + bias[j]) * weights[i];
        }
    }
    free(ns);
    free(ks);
    free(xs);
    free(ys);
    free(y);
    return status;
}

/* One token's q, k and v (a decode step): the three products as one batch into out = [q | k | v]
 * (their rows ns[0], ns[1], ns[2]; each x @ W^T + its bias), then the NeoX rotation of the first
 * `rotated` heads of head_dim values (q's and k's): value i of a head and its partner
 * j = i + head_dim/2 become (x_i cos_i + (-x_j) sin_i, x_j cos_j + x_i sin_j), each product
 * rounded, then the sum, as runtime/model/rope.py's apply_rope computes them in torch, so the same floats.
 * Returns as oss_matmul_batch. */
int oss_qkv_one_token(const int *formats, const uint8_t *const *ws, const int64_t *ns, int64_t k, const float *x,
                      const int *q8, const float *const *biases, int64_t head_dim, int64_t rotated, const float *cos,
                      const float *sin, float *out, int threads) {
    const uint8_t *no_scales[3] = {NULL, NULL, NULL};
    int64_t ks[3] = {k, k, k};
    const float *xs[3] = {x, x, x};
    float *ys[3] = {out, out + ns[0], out + ns[0] + ns[1]};
    if (head_dim % 2 != 0 || rotated * head_dim > ns[0] + ns[1]) return -1;
    int status = oss_matmul_batch(3, formats, ws, no_scales, ns, ks, xs, ys, q8, 1, threads);
    if (status != 0) return status;
    for (int j = 0; j < 3; j++)
        for (int64_t i = 0; i < ns[j]; i++) ys[j][i] = ys[j][i] + biases[j][i];
    int64_t half = head_dim / 2;
    float *kept = malloc(sizeof(float) * (size_t)head_dim);
    if (kept == NULL) return -2;
    for (int64_t h = 0; h < rotated; h++) {
        float *v = out + h * head_dim;
        memcpy(kept, v, sizeof(float) * (size_t)head_dim);
        for (int64_t i = 0; i < half; i++) {
            v[i] = kept[i] * cos[i] + -kept[i + half] * sin[i];
            v[i + half] = kept[i + half] * cos[i + half] + kept[i] * sin[i + half];
        }
    }
    free(kept);
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * One token's attention block (a decode step) in one call, for the layer described once in an
 * oss_attention_layer: x += o(attention(rms_norm(x))) + o's bias, the new position's k and v
 * written into the caller's cache, and the MoE block's normalized input computed from the new x.
 * The products and the rotation are oss_qkv_one_token's and oss_matmul_batch's (the same floats
 * as the per-product paths); the norm and the softmax are this file's own, in float, summed in
 * another order than torch's: within a few units in the last place of AttentionBlock's (runtime/model/attention.py).
 * ------------------------------------------------------------------------------------------------ */

typedef struct {
    int64_t hidden, heads, kv_heads, head_dim;
    int64_t window;  /* positions a query sees, its own included (sliding layers); 0: all */
    float eps;
    const float *norm;            /* [hidden]: the attention's RMSNorm weight */
    int formats[4];               /* q, k, v, o */
    const uint8_t *ws[4];
    int q8[4];
    const float *biases[4];
    const float *sinks;           /* [heads] */
    const float *next_norm;       /* [hidden]: the MoE block's RMSNorm weight */
} oss_attention_layer;

/* y = (x * r) * w, r = 1 / sqrt(mean(x^2) + eps), as runtime/model/norm.py's rms_norm; the squares summed in double */
static void rms_norm_one(const float *x, const float *w, int64_t n, float eps, float *y) {
    double squares = 0;
    for (int64_t i = 0; i < n; i++) squares += (double)x[i] * (double)x[i];
    float r = 1.f / sqrtf((float)(squares / (double)n) + eps);
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * r * w[i];
}

static float dot(const float *a, const float *b, int64_t n) {
    float lanes[LANES] = {0};
    int64_t whole = n / LANES * LANES;
    for (int64_t i = 0; i < whole; i += LANES)
        for (int j = 0; j < LANES; j++) lanes[j] += a[i + j] * b[i + j];
    for (int64_t i = whole; i < n; i++) lanes[i - whole] += a[i] * b[i];
    return add_lanes(lanes);
}

/* one query head q [head_dim] over `count` keys and values (`stride` floats apart), with the
 * head's sink logit in the softmax's denominator: out [head_dim]; p: room for `count` floats */
static void one_query_head(const float *q, const float *keys, const float *values, int64_t count, int64_t stride,
                           int64_t head_dim, float sink, float *p, float *out) {
    float top = sink, scale = sqrtf((float)head_dim);
    for (int64_t s = 0; s < count; s++) {
        p[s] = dot(q, keys + s * stride, head_dim) / scale;
        if (p[s] > top) top = p[s];
    }
    float total = 0.f;
    for (int64_t s = 0; s < count; s++) {
        p[s] = expf(p[s] - top);
        total += p[s];
    }
    total += expf(sink - top);
    for (int64_t d = 0; d < head_dim; d++) out[d] = 0.f;
    for (int64_t s = 0; s < count; s++) {
        float share = p[s] / total;
        const float *v = values + s * stride;
        for (int64_t d = 0; d < head_dim; d++) out[d] += share * v[d];
    }
}

/* x [hidden] is updated in place; keys and values [>= position + 1, kv_heads, head_dim] hold the
 * earlier positions' and get this one's; cos and sin [head_dim] are its rotation; next_h [hidden]
 * gets rms_norm(new x, next_norm). Returns 0, -1 for a layer the kernels cannot take, -2 when out
 * of memory. */
int oss_attention_one_token(const oss_attention_layer *layer, float *x, const float *cos, const float *sin,
                            float *keys, float *values, int64_t position, float *next_h, int threads) {
    int64_t hidden = layer->hidden, heads = layer->heads, hd = layer->head_dim, kv = layer->kv_heads * hd;
    int64_t group = layer->kv_heads > 0 ? heads / layer->kv_heads : 0;
    if (group <= 0 || group * layer->kv_heads != heads || position < 0) return -1;
    int64_t first = layer->window > 0 && position + 1 > layer->window ? position + 1 - layer->window : 0;
    int64_t count = position + 1 - first, ns[3] = {heads * hd, kv, kv}, attended = heads * hd;
    float *h = malloc(sizeof(float) * (size_t)hidden), *qkv = malloc(sizeof(float) * (size_t)(heads * hd + 2 * kv));
    float *mixed = malloc(sizeof(float) * (size_t)(heads * hd)), *o = malloc(sizeof(float) * (size_t)hidden);
    float *p = malloc(sizeof(float) * (size_t)(heads * count));
    int status = h == NULL || qkv == NULL || mixed == NULL || o == NULL || p == NULL ? -2 : 0;
    if (status == 0) {
        rms_norm_one(x, layer->norm, hidden, layer->eps, h);
        status = oss_qkv_one_token(layer->formats, layer->ws, ns, hidden, h, layer->q8, layer->biases, hd,
                                   heads + layer->kv_heads, cos, sin, qkv, threads);
    }
    if (status == 0) {
        memcpy(keys + position * kv, qkv + heads * hd, sizeof(float) * (size_t)kv);
        memcpy(values + position * kv, qkv + heads * hd + kv, sizeof(float) * (size_t)kv);
#pragma omp parallel for num_threads(threads > 0 ? threads : 1)
        for (int64_t head = 0; head < heads; head++) {
            int64_t at = first * kv + head / group * hd;
            one_query_head(qkv + head * hd, keys + at, values + at, count, kv, hd, layer->sinks[head],
                           p + head * count, mixed + head * hd);
        }
        const uint8_t *no_scales[1] = {NULL};
        const float *xs[1] = {mixed};
        float *ys[1] = {o};
        status = oss_matmul_batch(1, layer->formats + 3, layer->ws + 3, no_scales, &hidden, &attended, xs, ys,
                                  layer->q8 + 3, 1, threads);
    }
    if (status == 0) {
        for (int64_t j = 0; j < hidden; j++) x[j] = x[j] + (o[j] + layer->biases[3][j]);
        rms_norm_one(x, layer->next_norm, hidden, layer->eps, next_h);
    }
    free(h);
    free(qkv);
    free(mixed);
    free(o);
    free(p);
    return status;
}

/* ------------------------------------------------------------------------------------------------
 * One token's MoE block (a decode step) in two calls, for the layer described once in an
 * oss_moe_layer: the routing (oss_moe_route), then the chosen experts (oss_moe_experts) with
 * oss_moe_gate_up's and oss_moe_down's products and elementwise operations around a sigmoid of
 * this file's own. Between the two the caller makes sure the chosen experts' matrices are in the
 * layer's arrays (it fills an expert's entries at its first use, mapping its pages in). The
 * router's products, its softmax and the sigmoid round in another order than torch's: within a
 * few units in the last place of the torch path's (runtime/model/moe.py).
 * ------------------------------------------------------------------------------------------------ */

typedef struct {
    int64_t experts, top_k, hidden, inter;
    int parts;                      /* first matrices per expert: 1 (HF's rows, gate and up interleaved) or 2 */
    float limit, alpha;
    const float *router_w;          /* [experts, hidden] */
    const float *router_b;          /* [experts] */
    const float *b1, *b2;           /* [experts, 2 inter], [experts, hidden] */
    const int *first_formats;       /* [experts * parts]: expert e's first matrices at e * parts */
    const uint8_t *const *first_ws;
    const uint8_t *const *first_scales;
    const int *first_q8;
    const int *second_formats;      /* [experts]: each expert's second matrix */
    const uint8_t *const *second_ws;
    const uint8_t *const *second_scales;
    const int *second_q8;
} oss_moe_layer;

/* ids [top_k] <- the experts of the top_k largest router logits (the lower id first among
 * equals), in ascending id order; weights [top_k] <- their softmax over those k */
int oss_moe_route(const oss_moe_layer *layer, const float *h, int64_t *ids, float *weights) {
    int64_t experts = layer->experts, k = layer->top_k;
    if (k <= 0 || k > experts) return -1;
    float *logits = malloc(sizeof(float) * (size_t)experts);
    int64_t *top = malloc(sizeof(int64_t) * (size_t)k);
    if (logits == NULL || top == NULL) {
        free(logits);
        free(top);
        return -2;
    }
    for (int64_t e = 0; e < experts; e++)
        logits[e] = dot(h, layer->router_w + e * layer->hidden, layer->hidden) + layer->router_b[e];
    for (int64_t i = 0; i < k; i++) {  /* k passes: k is 4 */
        int64_t best = -1;
        for (int64_t e = 0; e < experts; e++) {
            int taken = 0;
            for (int64_t j = 0; j < i; j++) taken |= top[j] == e;
            if (!taken && (best < 0 || logits[e] > logits[best])) best = e;
        }
        top[i] = best;
    }
    float total = 0.f;
    for (int64_t i = 0; i < k; i++) total += (weights[i] = expf(logits[top[i]] - logits[top[0]]));
    for (int64_t i = 0; i < k; i++) weights[i] /= total;
    for (int64_t i = 0; i < k; i++) ids[i] = top[i];
    for (int64_t i = 1; i < k; i++)  /* ascending ids, weights alongside */
        for (int64_t j = i; j > 0 && ids[j - 1] > ids[j]; j--) {
            int64_t e = ids[j];
            float w = weights[j];
            ids[j] = ids[j - 1], weights[j] = weights[j - 1];
            ids[j - 1] = e, weights[j - 1] = w;
        }
    free(logits);
    free(top);
    return 0;
}

/* x [hidden] += the sum over the chosen experts (ids ascending, weights theirs) of their SwiGLU
 * MLPs on h [hidden], as oss_moe_gate_up and oss_moe_down compute them (the sum first, then
 * added to x: the residual's one rounding, as torch's x + moe) */
int oss_moe_experts(const oss_moe_layer *layer, const float *h, const int64_t *ids, const float *weights, float *x,
                    int threads) {
    int64_t k = layer->top_k, inter = layer->inter, parts = layer->parts, first_count = k * parts;
    int *formats = malloc(sizeof(int) * (size_t)(2 * first_count + 2 * k));
    const uint8_t **pointers = malloc(sizeof(uint8_t *) * (size_t)(2 * first_count + 2 * k));
    float *halves = malloc(sizeof(float) * (size_t)(3 * k * inter)), *out = malloc(sizeof(float) * (size_t)layer->hidden);
    int status = formats == NULL || pointers == NULL || halves == NULL || out == NULL ? -2 : 0;
    for (int64_t i = 0; i < k && status == 0; i++) {
        if (ids[i] < 0 || ids[i] >= layer->experts || layer->second_ws[ids[i]] == NULL) status = -1;
        for (int64_t p = 0; p < parts && status == 0; p++) {
            int64_t from = ids[i] * parts + p, to = i * parts + p;
            if (layer->first_ws[from] == NULL) status = -1;
            formats[to] = layer->first_formats[from];
            formats[first_count + to] = layer->first_q8[from];
            pointers[to] = layer->first_ws[from];
            pointers[first_count + to] = layer->first_scales[from];
        }
        if (status == 0) {
            formats[2 * first_count + i] = layer->second_formats[ids[i]];
            formats[2 * first_count + k + i] = layer->second_q8[ids[i]];
            pointers[2 * first_count + i] = layer->second_ws[ids[i]];
            pointers[2 * first_count + k + i] = layer->second_scales[ids[i]];
        }
    }
    float *gate = halves, *up1 = halves + k * inter, *sigmoid = halves + 2 * k * inter;
    if (status == 0)
        status = oss_moe_gate_up((int)k, (int)parts, formats, pointers, pointers + first_count, formats + first_count,
                                 inter, layer->hidden, h, layer->b1, ids, layer->limit, layer->alpha, gate, up1, sigmoid,
                                 threads);
    if (status == 0) {
        for (int64_t i = 0; i < k * inter; i++) sigmoid[i] = 1.f / (1.f + expf(-sigmoid[i]));
        status = oss_moe_down((int)k, formats + 2 * first_count, pointers + 2 * first_count,
                              pointers + 2 * first_count + k, formats + 2 * first_count + k, layer->hidden, inter, gate,
                              sigmoid, up1, layer->b2, ids, weights, out, threads);
    }
    for (int64_t j = 0; j < layer->hidden && status == 0; j++) x[j] = x[j] + out[j];
    free(formats);
    free(pointers);
    free(halves);
    free(out);
    return status;
}
