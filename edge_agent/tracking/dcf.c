/*
 * MOSSE correlation filter on a small grey patch; see dcf.h for the contracts.
 *
 * The 2-D FFT is two passes of a radix-2 FFT along the first axis (whole rows per butterfly, an
 * inner loop the compiler vectorises) with a transpose between them, so spectra are stored
 * transposed ([kx][ky]); only element-wise products happen there, and the inverse transposes
 * back.
 */
#include "dcf.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PI_F 3.14159265358979323846
/* Regularisation of the filter's denominator, relative to its mean: keeps a filter trained on
 * few patches from amplifying frequencies those patches barely contain. */
#define DCF_REG 0.01f

static void fft2(const DcfPlan *p, float *re, float *im, float *tr, float *ti, int inverse);

void dcf_plan_init(DcfPlan *p)
{
    int bits = 0;
    while ((1 << bits) < DCF_N) bits++;
    for (int i = 0; i < DCF_N; i++) {
        int r = 0;
        for (int b = 0; b < bits; b++)
            if (i & (1 << b)) r |= 1 << (bits - 1 - b);
        p->rev[i] = r;
    }
    for (int k = 0; k < DCF_N / 2; k++) {
        p->cosw[k] = (float)cos(2.0 * PI_F * k / DCF_N);
        p->sinw[k] = (float)sin(2.0 * PI_F * k / DCF_N);
    }
    for (int y = 0; y < DCF_N; y++)
        for (int x = 0; x < DCF_N; x++) {
            double hy = 0.5 - 0.5 * cos(2.0 * PI_F * (y + 0.5) / DCF_N);
            double hx = 0.5 - 0.5 * cos(2.0 * PI_F * (x + 0.5) / DCF_N);
            p->hann[y * DCF_N + x] = (float)(hy * hx);
        }
    for (int v = 0; v < DCF_LOG_LEVELS; v++) p->logtab[v] = (float)log1p(v / 4.0);
    /* The target: a Gaussian peak at zero displacement (circular), so the peak's index is the
     * displacement. Its spectrum, as every spectrum here, is stored transposed. */
    float gr[DCF_CELLS], gi[DCF_CELLS];
    for (int y = 0; y < DCF_N; y++)
        for (int x = 0; x < DCF_N; x++) {
            int dy = y < DCF_N / 2 ? y : DCF_N - y, dx = x < DCF_N / 2 ? x : DCF_N - x;
            gr[y * DCF_N + x] =
                (float)exp(-(dx * dx + dy * dy) / (2.0 * DCF_SIGMA * DCF_SIGMA));
            gi[y * DCF_N + x] = 0.0f;
        }
    DcfWork w;
    memcpy(w.re, gr, sizeof gr);
    memcpy(w.im, gi, sizeof gi);
    fft2(p, w.re, w.im, w.tr, w.ti, 0);
    memcpy(p->g_re, w.re, sizeof p->g_re);
    memcpy(p->g_im, w.im, sizeof p->g_im);
}

/* Radix-2 FFT of every column at once (along axis 0 of an N x N row-major array). */
static void fft_axis0(const DcfPlan *p, float *re, float *im, int inverse)
{
    for (int i = 0; i < DCF_N; i++) {
        int j = p->rev[i];
        if (j <= i) continue;
        for (int x = 0; x < DCF_N; x++) {
            float t = re[i * DCF_N + x];
            re[i * DCF_N + x] = re[j * DCF_N + x];
            re[j * DCF_N + x] = t;
            t = im[i * DCF_N + x];
            im[i * DCF_N + x] = im[j * DCF_N + x];
            im[j * DCF_N + x] = t;
        }
    }
    for (int len = 2; len <= DCF_N; len <<= 1) {
        int half = len >> 1, step = DCF_N / len;
        for (int s = 0; s < DCF_N; s += len)
            for (int k = 0; k < half; k++) {
                float wr = p->cosw[k * step];
                float wi = inverse ? p->sinw[k * step] : -p->sinw[k * step];
                float *restrict ar = re + (s + k) * DCF_N, *restrict ai = im + (s + k) * DCF_N;
                float *restrict br = re + (s + k + half) * DCF_N;
                float *restrict bi = im + (s + k + half) * DCF_N;
                for (int x = 0; x < DCF_N; x++) {
                    float tr = br[x] * wr - bi[x] * wi, ti = br[x] * wi + bi[x] * wr;
                    br[x] = ar[x] - tr;
                    bi[x] = ai[x] - ti;
                    ar[x] += tr;
                    ai[x] += ti;
                }
            }
    }
}

static void transpose(const float *restrict in, float *restrict out)
{
    for (int y = 0; y < DCF_N; y++)
        for (int x = 0; x < DCF_N; x++) out[x * DCF_N + y] = in[y * DCF_N + x];
}

/* 2-D FFT of (re, im) in place via the scratch (tr, ti); forward output and inverse input are
 * transposed. The inverse is scaled by 1 / cells. */
static void fft2(const DcfPlan *p, float *re, float *im, float *tr, float *ti, int inverse)
{
    fft_axis0(p, re, im, inverse);
    transpose(re, tr);
    transpose(im, ti);
    fft_axis0(p, tr, ti, inverse);
    if (inverse) {
        const float s = 1.0f / DCF_CELLS;
        for (int k = 0; k < DCF_CELLS; k++) {
            re[k] = tr[k] * s;
            im[k] = ti[k] * s;
        }
    } else {
        memcpy(re, tr, sizeof(float) * DCF_CELLS);
        memcpy(im, ti, sizeof(float) * DCF_CELLS);
    }
}

/* Pixel offsets of 2 x DCF_N sub-samples along one axis: two per cell, at its quarter points,
 * nearest pixel, clamped to the image (the border is repeated). */
static void sub_offsets(double start, double cell, int size, ptrdiff_t stride, ptrdiff_t *off)
{
    for (int s = 0; s < 2 * DCF_N; s++) {
        double v = floor(start + (s + 0.5) * 0.5 * cell);
        int i = v < 0 ? 0 : (v > size - 1 ? size - 1 : (int)v);
        off[s] = (ptrdiff_t)i * stride;
    }
}

static inline int grey(const unsigned char *px, ptrdiff_t sc)
{
    /* ITU-R BT.601 weights in 1/256 (B, G, R order) */
    return (29 * px[0] + 150 * px[sc] + 77 * px[2 * sc] + 128) >> 8;
}

int dcf_sample(const DcfPlan *p, const DcfImage *img, double cx, double cy, double ww, double wh,
               DcfWork *w)
{
    if (!(ww > 0 && wh > 0 && isfinite(cx) && isfinite(cy) && isfinite(ww) && isfinite(wh)))
        return -1;
    ptrdiff_t xo[2 * DCF_N], yo[2 * DCF_N];
    sub_offsets(cx - 0.5 * ww, ww / DCF_N, img->w, img->sx, xo);
    sub_offsets(cy - 0.5 * wh, wh / DCF_N, img->h, img->sy, yo);
    double sum = 0.0;
    for (int i = 0; i < DCF_N; i++) {
        const unsigned char *r0 = img->data + yo[2 * i], *r1 = img->data + yo[2 * i + 1];
        for (int j = 0; j < DCF_N; j++) {
            ptrdiff_t a = xo[2 * j], b = xo[2 * j + 1];
            int v = grey(r0 + a, img->sc) + grey(r0 + b, img->sc) + grey(r1 + a, img->sc) +
                    grey(r1 + b, img->sc);
            float f = p->logtab[v];
            w->re[i * DCF_N + j] = f;
            sum += f;
        }
    }
    /* zero mean, unit variance, then the Hann window (MOSSE's preprocessing) */
    float mean = (float)(sum / DCF_CELLS);
    double var = 0.0;
    for (int k = 0; k < DCF_CELLS; k++) {
        float d = w->re[k] - mean;
        var += (double)d * d;
    }
    float scale = var > 1e-12 ? (float)(1.0 / sqrt(var / DCF_CELLS)) : 0.0f;
    for (int k = 0; k < DCF_CELLS; k++) {
        w->re[k] = (w->re[k] - mean) * scale * p->hann[k];
        w->im[k] = 0.0f;
    }
    fft2(p, w->re, w->im, w->tr, w->ti, 0);
    return 0;
}

void dcf_train(const DcfPlan *p, DcfFilter *f, const DcfWork *w, float rate)
{
    if (rate >= 1.0f) memset(f, 0, sizeof *f); /* a fresh slot holds whatever was there */
    const float keep = 1.0f - rate;
    for (int k = 0; k < DCF_CELLS; k++) {
        float fr = w->re[k], fi = w->im[k], gr = p->g_re[k], gi = p->g_im[k];
        /* G x conj(F) and |F|^2 */
        float ar = gr * fr + gi * fi, ai = gi * fr - gr * fi, b = fr * fr + fi * fi;
        f->a_re[k] = keep * f->a_re[k] + rate * ar;
        f->a_im[k] = keep * f->a_im[k] + rate * ai;
        f->b[k] = keep * f->b[k] + rate * b;
    }
}

static inline int wrap(int i) { return i < DCF_N / 2 ? i : i - DCF_N; }

/* Sub-cell offset of a peak from its two neighbours (a parabola's vertex), in [-0.5, 0.5]. */
static double vertex(double l, double c, double r)
{
    double den = l - 2.0 * c + r;
    if (!(den < 0)) return 0.0;
    double o = 0.5 * (l - r) / den;
    return o < -0.5 ? -0.5 : (o > 0.5 ? 0.5 : o);
}

double dcf_locate(const DcfPlan *p, const DcfFilter *f, DcfWork *w, double *dx, double *dy,
                  double *peak)
{
    double bsum = 0.0;
    for (int k = 0; k < DCF_CELLS; k++) bsum += f->b[k];
    float reg = DCF_REG * (float)(bsum / DCF_CELLS) + 1e-12f;
    for (int k = 0; k < DCF_CELLS; k++) {
        float fr = w->re[k], fi = w->im[k], inv = 1.0f / (f->b[k] + reg);
        float ar = f->a_re[k], ai = f->a_im[k];
        w->re[k] = (fr * ar - fi * ai) * inv;
        w->im[k] = (fr * ai + fi * ar) * inv;
    }
    fft2(p, w->re, w->im, w->tr, w->ti, 1);
    const float *r = w->re;
    int best = 0;
    for (int k = 1; k < DCF_CELLS; k++)
        if (r[k] > r[best]) best = k;
    int py = best / DCF_N, px = best % DCF_N;
    double s = 0.0, ss = 0.0;
    int n = 0;
    for (int y = 0; y < DCF_N; y++) {
        int ady = abs(wrap((y - py + DCF_N) % DCF_N));
        for (int x = 0; x < DCF_N; x++) {
            int adx = abs(wrap((x - px + DCF_N) % DCF_N));
            if (ady <= DCF_PSR_EXCLUDE && adx <= DCF_PSR_EXCLUDE) continue;
            double v = r[y * DCF_N + x];
            s += v;
            ss += v * v;
            n++;
        }
    }
    double mean = s / n, var = ss / n - mean * mean;
    double c = r[best];
    int xl = (px + DCF_N - 1) % DCF_N, xr = (px + 1) % DCF_N;
    int yl = (py + DCF_N - 1) % DCF_N, yr = (py + 1) % DCF_N;
    *dx = wrap(px) + vertex(r[py * DCF_N + xl], c, r[py * DCF_N + xr]);
    *dy = wrap(py) + vertex(r[yl * DCF_N + px], c, r[yr * DCF_N + px]);
    *peak = c;
    return var > 1e-20 ? (c - mean) / sqrt(var) : 0.0;
}

int dcf_colour(const DcfImage *img, const double *box, float *h)
{
    double bw = box[2] - box[0], bh = box[3] - box[1];
    if (!(bw > 0 && bh > 0 && isfinite(box[0]) && isfinite(box[1]))) return -1;
    ptrdiff_t xo[DCF_N], yo[DCF_N];
    for (int s = 0; s < DCF_N; s++) {
        double vx = floor(box[0] + (s + 0.5) * bw / DCF_N), vy = floor(box[1] + (s + 0.5) * bh / DCF_N);
        int ix = vx < 0 ? 0 : (vx > img->w - 1 ? img->w - 1 : (int)vx);
        int iy = vy < 0 ? 0 : (vy > img->h - 1 ? img->h - 1 : (int)vy);
        xo[s] = (ptrdiff_t)ix * img->sx;
        yo[s] = (ptrdiff_t)iy * img->sy;
    }
    memset(h, 0, sizeof(float) * DCF_COL_BINS);
    const int shift = 8 - 3; /* 256 levels -> DCF_COL_LEVELS */
    for (int i = 0; i < DCF_N; i++)
        for (int j = 0; j < DCF_N; j++) {
            const unsigned char *px = img->data + yo[i] + xo[j];
            int k = ((px[0] >> shift) * DCF_COL_LEVELS + (px[img->sc] >> shift)) * DCF_COL_LEVELS +
                    (px[2 * img->sc] >> shift);
            h[k] += 1.0f / DCF_CELLS;
        }
    return 0;
}

double dcf_bhattacharyya(const float *a, const float *b)
{
    double s = 0.0;
    for (int k = 0; k < DCF_COL_BINS; k++)
        if (a[k] > 0 && b[k] > 0) s += sqrt((double)a[k] * b[k]);
    return s;
}
