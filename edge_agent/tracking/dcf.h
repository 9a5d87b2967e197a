/*
 * A discriminative correlation filter per track (MOSSE: Bolme et al., "Visual Object Tracking
 * using Adaptive Correlation Filters", CVPR 2010), on a DCF_N x DCF_N grey patch sampled from a
 * window twice the track's box (DSST's sample size), and a colour histogram of the box. No
 * Python here; every function works on caller-owned memory and there is no global state.
 *
 * The constants are the literature's, not fitted here: learning rate 0.125 and the PSR threshold
 * 7 (below it "the object is occluded or tracking has failed") from MOSSE, a Gaussian target
 * whose sigma is 1/16 of the target size (DSST), PSR sidelobes outside an 11 x 11 window around
 * the peak (MOSSE).
 */
#ifndef EDGE_AGENT_DCF_H
#define EDGE_AGENT_DCF_H

#include <stddef.h>

#define DCF_N 32                 /* patch side in cells (a power of two: radix-2 FFT) */
#define DCF_CELLS (DCF_N * DCF_N)
#define DCF_RATE 0.125f          /* MOSSE learning rate */
#define DCF_PSR_MIN 7.0          /* MOSSE: below this the patch is lost */
#define DCF_WINDOW 2.0           /* sample window side / box side (DSST) */
#define DCF_SIGMA (DCF_N / DCF_WINDOW / 16.0) /* Gaussian target, cells: target size / 16 */
#define DCF_PSR_EXCLUDE 5        /* sidelobe excludes |d| <= 5 cells: MOSSE's 11 x 11 */
#define DCF_LOG_LEVELS (4 * 255 + 1) /* a cell is the sum of four grey samples */

/* A BGR uint8 image of any strides (bytes). */
typedef struct {
    const unsigned char *data;
    ptrdiff_t sy, sx, sc;
    int w, h;
} DcfImage;

/* Colour histogram of a box: 8 x 8 x 8 bins over B, G, R (Nummiaro, Koller-Meier and Van Gool,
 * "An adaptive color-based particle filter", 2003), from DCF_N x DCF_N samples of the box. */
#define DCF_COL_LEVELS 8
#define DCF_COL_BINS (DCF_COL_LEVELS * DCF_COL_LEVELS * DCF_COL_LEVELS)

/* One track's filter in the Fourier domain: H* = A / B (MOSSE's numerator and denominator),
 * and its colour histogram. */
typedef struct {
    float a_re[DCF_CELLS], a_im[DCF_CELLS], b[DCF_CELLS];
    float col[DCF_COL_BINS];
} DcfFilter;

/* Tables computed once per tracker: FFT twiddles, the Hann window, the target's spectrum. */
typedef struct {
    float cosw[DCF_N / 2], sinw[DCF_N / 2];
    int rev[DCF_N];
    float hann[DCF_CELLS];
    float g_re[DCF_CELLS], g_im[DCF_CELLS];
    float logtab[DCF_LOG_LEVELS];
} DcfPlan;

/* Scratch of one call (a patch and its spectrum). */
typedef struct {
    float re[DCF_CELLS], im[DCF_CELLS];
    float tr[DCF_CELLS], ti[DCF_CELLS];
} DcfWork;

void dcf_plan_init(DcfPlan *p);

/* The window centred on (cx, cy) of ww x wh pixels as a preprocessed patch in w->re (log grey,
 * zero mean, unit energy, Hann window) and its spectrum in w->re/w->im. 0, or -1 when the
 * window is degenerate (nothing is written then). */
int dcf_sample(const DcfPlan *p, const DcfImage *img, double cx, double cy, double ww, double wh,
               DcfWork *w);

/* Train `f` on the spectrum in `w` (from dcf_sample): rate 1 starts the filter afresh. */
void dcf_train(const DcfPlan *p, DcfFilter *f, const DcfWork *w, float rate);

/* Correlate `f` with the spectrum in `w`: the peak's displacement in cells (sub-cell, from a
 * parabola through the peak and its neighbours), its height (1 = the response to the patch the
 * filter was trained on, about 0 for an unrelated one) and, returned, its peak-to-sidelobe
 * ratio. Overwrites w. */
double dcf_locate(const DcfPlan *p, const DcfFilter *f, DcfWork *w, double *dx, double *dy,
                  double *peak);

/* The colour histogram (sums to 1) of the box x1, y1, x2, y2 into h; -1 when degenerate. */
int dcf_colour(const DcfImage *img, const double *box, float *h);

/* Bhattacharyya coefficient of two histograms (1: the same, 0: disjoint). */
double dcf_bhattacharyya(const float *a, const float *b);

#endif
