/*
 * The tracker's math, apart from the CPython glue (no Python.h): the Kalman filter, box
 * geometry, the LAPJV assignment solver and the running score window. C99; every function
 * here works on caller-owned memory and has no global state.
 */
#ifndef EDGE_AGENT_TRACKMATH_H
#define EDGE_AGENT_TRACKMATH_H

#include <math.h>
#include <stddef.h>

/* --- Kalman filter ------------------------------------------------------------------------ */

/*
 * Constant velocity over (cx, cy, a, h). With F = [[I, I], [0, I]], H = [I, 0] and diagonal
 * Q, R, P0 the 8x8 covariance never couples different coordinates, so each coordinate is an
 * independent 2-state filter whose covariance is kept as three numbers (pp, pv, vv). This is
 * exactly the 8x8 filter, only cheaper.
 */
typedef struct {
    double m[8];    /* cx, cy, a, h, vcx, vcy, va, vh */
    double P[4][3]; /* per coordinate k: var(pos), cov(pos, vel), var(vel) */
} KF;

typedef struct {
    double w_pos, w_vel; /* process noise std as a fraction of box height, per frame */
    double w_meas;       /* measurement noise std as a fraction of box height */
} KFParams;

void kf_initiate(KF *kf, const double z[4], const KFParams *kp);
void kf_predict(KF *kf, const KFParams *kp);
void kf_update(KF *kf, const double z[4], const KFParams *kp);
/* A measurement of the centre only (cx, cy), with the same noise as a box's: the visual
 * tracker's, which says where the object is but not how big. */
void kf_update_centre(KF *kf, double cx, double cy, const KFParams *kp);

/* --- boxes (inline: they sit in the association's inner loop) ----------------------------- */

/* (x1, y1, x2, y2) -> (cx, cy, w/h, h); callers guarantee w > 0 and h > 0. */
static inline void box_to_z(const double *b, double z[4])
{
    double w = b[2] - b[0], h = b[3] - b[1];
    z[0] = b[0] + 0.5 * w;
    z[1] = b[1] + 0.5 * h;
    z[2] = w / h;
    z[3] = h;
}

static inline void z_to_box(const double *z, double b[4])
{
    double h = z[3], w = z[2] * h;
    b[0] = z[0] - 0.5 * w;
    b[1] = z[1] - 0.5 * h;
    b[2] = z[0] + 0.5 * w;
    b[3] = z[1] + 0.5 * h;
}

/* min/max of two finite numbers (fmin/fmax are library calls here: their NaN rules) */
static inline double dmin(double a, double b) { return a < b ? a : b; }
static inline double dmax(double a, double b) { return a > b ? a : b; }

static inline double box_iou(const double *a, const double *b)
{
    double iw = dmin(a[2], b[2]) - dmax(a[0], b[0]);
    if (iw <= 0) return 0.0;
    double ih = dmin(a[3], b[3]) - dmax(a[1], b[1]);
    if (ih <= 0) return 0.0;
    double inter = iw * ih;
    double ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    return ua > 0 ? inter / ua : 0.0;
}

/* acos(x) for x in [-1, 1] within 2e-8 rad: Abramowitz & Stegun, Handbook of Mathematical
 * Functions, 4.4.46 (for 0 <= x <= 1; acos(-x) = pi - acos(x)). The direction term of every
 * gated pair needs one, and libm's exact acos was a tenth of update(). */
static inline double acos_fast(double x)
{
    double ax = x < 0 ? -x : x;
    double p = -0.0012624911;
    p = p * ax + 0.0066700901;
    p = p * ax - 0.0170881256;
    p = p * ax + 0.0308918810;
    p = p * ax - 0.0501743046;
    p = p * ax + 0.0889789874;
    p = p * ax - 0.2145988016;
    p = p * ax + 1.5707963050;
    double r = sqrt(1.0 - ax) * p;
    return x < 0 ? 3.14159265358979323846 - r : r;
}

/* `b` enlarged by `buf` times its width/height on each side, into `o` (C-BIoU). */
static inline void box_expand(const double *b, double buf, double *o)
{
    double w = b[2] - b[0], h = b[3] - b[1];
    o[0] = b[0] - buf * w;
    o[1] = b[1] - buf * h;
    o[2] = b[2] + buf * w;
    o[3] = b[3] + buf * h;
}

/* --- LAPJV -------------------------------------------------------------------------------- */

/* Scratch of one solve: six int and two double arrays of `dim` elements, caller-owned. */
typedef struct {
    int *rowsol, *colsol, *freerows, *collist, *pred, *matches;
    double *v, *d;
} LapWork;

/* Jonker & Volgenant (1987), dense square: minimises sum cost[i * dim + rowsol[i]]. The
 * result is in w->rowsol (and w->colsol). Cannot fail; cost must be finite. */
void lapjv(int dim, const double *cost, LapWork *w);

/* --- running score window ----------------------------------------------------------------- */

/*
 * The last `cap` detection scores of one class. At each refresh (when a quarter of the samples
 * is new) a copy of the window gives the window's low and high quantiles (SCORE_Q_LO, SCORE_Q_HI), and
 * score_window_normalise() places a score on that range: (s - lo) / (hi - lo) clipped to 0..1.
 * A positive affine map of all scores (x 0.5, + 0.1) leaves the result unchanged.
 */
#define SCORE_Q_LO 0.02
#define SCORE_Q_HI 0.90

typedef struct {
    double cls;
    double *ring;   /* cap scores, oldest overwritten first */
    double *sorted; /* scratch for the refresh (partially ordered by the quantile search) */
    double lo, hi;  /* quantiles as of the last refresh */
    int cap, n, pos, fresh, ready;
} ScoreWindow;

/* 0, or -1 when out of memory (the window is then empty and score_window_free is safe). */
int score_window_init(ScoreWindow *w, double cls, int cap);
void score_window_free(ScoreWindow *w);
void score_window_push(ScoreWindow *w, double score);
/* Recompute lo and hi when at least a quarter of the samples arrived since the last time. */
void score_window_refresh(ScoreWindow *w);
/* The score on the window's range, in [0, 1]; 1 before any refresh or for a flat window. */
double score_window_normalise(const ScoreWindow *w, double score);

#endif
