/*
 * IOU/Kalman multi-object tracker (C99 CPython extension, no third-party C code).
 *
 * One `Core` object per camera. Per frame: predict every track with a constant-velocity Kalman
 * filter over (cx, cy, aspect, h); associate detections in stages (ByteTrack / DeepStream style)
 * with an optimal assignment (Jonker-Volgenant) solved per connected component of the gated
 * IoU graph; then run the lifecycle (tentative -> active -> lost/shadow -> removed).
 *
 * The Python wrapper (edge_agent/tracking/__init__.py) validates parameters and turns the
 * returned bytearray into a NumPy array; this file validates the detection buffer itself.
 *
 * Kalman note: with F = [[I, I], [0, I]], H = [I, 0] and diagonal Q, R, P0, the 8x8 covariance
 * never couples different coordinates, so each coordinate is an independent 2-state filter whose
 * covariance is kept as three numbers (pp, pv, vv). This is exactly the 8x8 filter, only cheaper.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ST_TENTATIVE 0
#define ST_ACTIVE 1
#define ST_LOST 2
#define ST_DEAD 3

#define OUT_COLS 8
#define DET_COLS 6
#define LAP_BIG 1e6
#define PI_D 3.14159265358979323846
#define HIST 4 /* observation centres kept per track, for the motion direction */
#define ORU_MAX_GAP 300
/* Largest number of detections accepted per frame: keeps scratch sizes sane. */
#define MAX_DETS 100000
/* Coordinates beyond this are an upstream bug, and would overflow the Kalman variances. */
#define MAX_COORD 1e7

/* ------------------------------------------------------------------------------------------ */
/* Kalman filter                                                                               */

typedef struct {
    double m[8];    /* cx, cy, a, h, vcx, vcy, va, vh */
    double P[4][3]; /* per coordinate k: var(pos), cov(pos, vel), var(vel) */
} KF;

typedef struct {
    double w_pos, w_vel; /* process noise std as a fraction of box height */
    double w_meas;       /* measurement noise std as a fraction of box height */
} KFParams;

static void kf_initiate(KF *kf, const double z[4], const KFParams *kp)
{
    double h = z[3];
    double sp[4] = {2 * kp->w_pos * h, 2 * kp->w_pos * h, 1e-2, 2 * kp->w_pos * h};
    double sv[4] = {10 * kp->w_vel * h, 10 * kp->w_vel * h, 1e-5, 10 * kp->w_vel * h};
    for (int k = 0; k < 4; k++) {
        kf->m[k] = z[k];
        kf->m[4 + k] = 0.0;
        kf->P[k][0] = sp[k] * sp[k];
        kf->P[k][1] = 0.0;
        kf->P[k][2] = sv[k] * sv[k];
    }
}

static void kf_predict(KF *kf, const KFParams *kp)
{
    double h = kf->m[3];
    double sp[4] = {kp->w_pos * h, kp->w_pos * h, 1e-2, kp->w_pos * h};
    double sv[4] = {kp->w_vel * h, kp->w_vel * h, 1e-5, kp->w_vel * h};
    for (int k = 0; k < 4; k++) {
        double pp = kf->P[k][0], pv = kf->P[k][1], vv = kf->P[k][2];
        kf->m[k] += kf->m[4 + k];
        kf->P[k][0] = pp + 2 * pv + vv + sp[k] * sp[k];
        kf->P[k][1] = pv + vv;
        kf->P[k][2] = vv + sv[k] * sv[k];
    }
}

static void kf_update(KF *kf, const double z[4], const KFParams *kp)
{
    double h = kf->m[3];
    double sr[4] = {kp->w_meas * h, kp->w_meas * h, 1e-1, kp->w_meas * h};
    for (int k = 0; k < 4; k++) {
        double pp = kf->P[k][0], pv = kf->P[k][1], vv = kf->P[k][2];
        double s = pp + sr[k] * sr[k];
        double kpos = pp / s, kvel = pv / s;
        double y = z[k] - kf->m[k];
        kf->m[k] += kpos * y;
        kf->m[4 + k] += kvel * y;
        kf->P[k][0] = pp - kpos * pp;
        kf->P[k][1] = pv - kpos * pv;
        kf->P[k][2] = vv - kvel * pv;
    }
}

/* (x1, y1, x2, y2) -> (cx, cy, w/h, h); callers guarantee w > 0 and h > 0. */
static void box_to_z(const double *b, double z[4])
{
    double w = b[2] - b[0], h = b[3] - b[1];
    z[0] = b[0] + 0.5 * w;
    z[1] = b[1] + 0.5 * h;
    z[2] = w / h;
    z[3] = h;
}

static void z_to_box(const double *z, double b[4])
{
    double h = z[3], w = z[2] * h;
    b[0] = z[0] - 0.5 * w;
    b[1] = z[1] - 0.5 * h;
    b[2] = z[0] + 0.5 * w;
    b[3] = z[1] + 0.5 * h;
}

static double iou(const double *a, const double *b)
{
    double iw = fmin(a[2], b[2]) - fmax(a[0], b[0]);
    if (iw <= 0) return 0.0;
    double ih = fmin(a[3], b[3]) - fmax(a[1], b[1]);
    if (ih <= 0) return 0.0;
    double inter = iw * ih;
    double ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    return ua > 0 ? inter / ua : 0.0;
}

/* ------------------------------------------------------------------------------------------ */
/* LAPJV: Jonker & Volgenant (1987), dense square version. Minimises sum cost[i][rowsol[i]].   */

typedef struct {
    int *rowsol, *colsol, *freerows, *collist, *pred, *matches;
    double *v, *d;
} LapWork;

static void lapjv(int dim, const double *cost, LapWork *w)
{
    int *rowsol = w->rowsol, *colsol = w->colsol, *freerows = w->freerows;
    int *collist = w->collist, *pred = w->pred, *matches = w->matches;
    double *v = w->v, *d = w->d;
    int numfree = 0;
#define C(i, j) cost[(size_t)(i) * (size_t)dim + (size_t)(j)]

    for (int i = 0; i < dim; i++) matches[i] = 0;
    /* Column reduction: each column's cheapest row takes it if still free. */
    for (int j = dim - 1; j >= 0; j--) {
        double mn = C(0, j);
        int imin = 0;
        for (int i = 1; i < dim; i++)
            if (C(i, j) < mn) { mn = C(i, j); imin = i; }
        v[j] = mn;
        if (++matches[imin] == 1) {
            rowsol[imin] = j;
            colsol[j] = imin;
        } else if (v[j] < v[rowsol[imin]]) {
            int j1 = rowsol[imin];
            rowsol[imin] = j;
            colsol[j] = imin;
            colsol[j1] = -1;
        } else {
            colsol[j] = -1;
        }
    }
    /* Reduction transfer from assigned rows; collect unassigned rows. */
    for (int i = 0; i < dim; i++) {
        if (matches[i] == 0) {
            freerows[numfree++] = i;
        } else if (matches[i] == 1) {
            int j1 = rowsol[i];
            double mn = HUGE_VAL;
            for (int j = 0; j < dim; j++)
                if (j != j1 && C(i, j) - v[j] < mn) mn = C(i, j) - v[j];
            if (mn < HUGE_VAL) v[j1] -= mn;
        }
    }
    /* Augmenting row reduction, two passes; a step budget guards against float ties cycling
     * (rows that exhaust it simply go on to the augmentation phase). */
    long budget = 64L * dim + 64;
    for (int loop = 0; loop < 2; loop++) {
        int k = 0, prvnumfree = numfree;
        numfree = 0;
        while (k < prvnumfree) {
            int i = freerows[k++];
            double umin = C(i, 0) - v[0], usubmin = HUGE_VAL;
            int j1 = 0, j2 = 0;
            for (int j = 1; j < dim; j++) {
                double h = C(i, j) - v[j];
                if (h < usubmin) {
                    if (h >= umin) {
                        usubmin = h;
                        j2 = j;
                    } else {
                        usubmin = umin;
                        umin = h;
                        j2 = j1;
                        j1 = j;
                    }
                }
            }
            int i0 = colsol[j1];
            int strict = umin < usubmin && usubmin < HUGE_VAL;
            if (strict) {
                v[j1] -= usubmin - umin;
            } else if (i0 > -1 && dim > 1) {
                j1 = j2;
                i0 = colsol[j2];
            }
            rowsol[i] = j1;
            colsol[j1] = i;
            if (i0 > -1) {
                if (strict && --budget > 0) freerows[--k] = i0;
                else freerows[numfree++] = i0;
            }
        }
    }
    /* Augmentation: shortest augmenting path (Dijkstra on reduced costs) per free row. */
    for (int f = 0; f < numfree; f++) {
        int freerow = freerows[f];
        int low = 0, up = 0, last = 0, endofpath = -1, found = 0;
        double mn = 0.0;
        for (int j = 0; j < dim; j++) {
            d[j] = C(freerow, j) - v[j];
            pred[j] = freerow;
            collist[j] = j;
        }
        while (!found) {
            if (up == low) {
                last = low - 1;
                mn = d[collist[up++]];
                for (int k = up; k < dim; k++) {
                    int j = collist[k];
                    double h = d[j];
                    if (h <= mn) {
                        if (h < mn) { up = low; mn = h; }
                        collist[k] = collist[up];
                        collist[up++] = j;
                    }
                }
                for (int k = low; k < up; k++)
                    if (colsol[collist[k]] < 0) {
                        endofpath = collist[k];
                        found = 1;
                        break;
                    }
            }
            if (!found) {
                int j1 = collist[low++];
                int i = colsol[j1];
                double h = C(i, j1) - v[j1] - mn;
                for (int k = up; k < dim; k++) {
                    int j = collist[k];
                    double v2 = C(i, j) - v[j] - h;
                    if (v2 < d[j]) {
                        pred[j] = i;
                        if (v2 == mn) {
                            if (colsol[j] < 0) {
                                endofpath = j;
                                found = 1;
                                break;
                            }
                            collist[k] = collist[up];
                            collist[up++] = j;
                        }
                        d[j] = v2;
                    }
                }
            }
        }
        for (int k = 0; k <= last; k++) {
            int j1 = collist[k];
            v[j1] += d[j1] - mn;
        }
        for (;;) {
            int i = pred[endofpath];
            colsol[endofpath] = i;
            int j1 = endofpath;
            endofpath = rowsol[i];
            rowsol[i] = j1;
            if (i == freerow) break;
        }
    }
#undef C
}

/* ------------------------------------------------------------------------------------------ */
/* Tracker object                                                                              */

typedef struct {
    KF kf;
    KF kf_obs;      /* filter state right after the last observation (for re-update) */
    double obs[4];  /* last observed box x1, y1, x2, y2 */
    double box[4];  /* current state as a box (refreshed after predict/update) */
    double hist[HIST][3]; /* ring of observed centres: cx, cy, frame */
    int nhist, hpos;
    double score, cls;
    long long id;   /* 0 while tentative */
    long fsu;       /* frames since the last matched detection */
    int state, hits, misses;
} Track;

typedef struct {
    double high_thresh, low_thresh, new_track_thresh;
    double match_thresh, low_match_thresh, tentative_match_thresh, recovery_thresh;
    double iou_buffer, shadow_buffer, direction_weight;
    long direction_delta;
    int fuse_score, observation_centric, active_first;
    long probation_age, max_tentative_misses, max_shadow_age, coast_frames;
    KFParams kfp;
} Params;

typedef struct {
    int t, d;
    double cost;
} Edge;

typedef struct {
    double x1;
    int idx;
} SortKey;

typedef struct {
    PyObject_HEAD
    Params p;
    Track *tracks;
    Py_ssize_t ntracks;
    size_t cap_tracks;
    long long next_id;
    long long frame_count;
    /* scratch, grown on demand and kept between frames */
    double *dets;          size_t cap_dets;      /* N x 6 */
    int *dmatch;           size_t cap_dmatch;    /* per detection: matched track or -1 */
    unsigned char *tmatched; size_t cap_tmatched; /* per track: matched this frame */
    int *ilist_a;          size_t cap_ilist_a;   /* index lists (tracks) */
    int *ilist_b;          size_t cap_ilist_b;   /* index lists (detections) */
    int *tassign;          size_t cap_tassign;   /* per listed track: listed det index or -1 */
    Edge *edges;           size_t cap_edges;
    int *uf;               size_t cap_uf;        /* union-find parents, then grouping */
    int *cnt;              size_t cap_cnt;
    int *order;            size_t cap_order;
    int *rowmap;           size_t cap_rowmap;
    int *colmap;           size_t cap_colmap;
    int *rows;             size_t cap_rows;
    int *cols;             size_t cap_cols;
    SortKey *keys;         size_t cap_keys;
    double *lapcost;       size_t cap_lapcost;
    int *lapi;             size_t cap_lapi;      /* 6 int arrays of dim */
    double *lapd;          size_t cap_lapd;      /* 2 double arrays of dim */
} CoreObject;

/* Grow *buf to hold `need` elements of `elem` bytes; -1 with MemoryError on failure. */
static int ensure(void **buf, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : 16;
    while (n < need) n *= 2;
    if (n > ((size_t)-1) / elem) { PyErr_NoMemory(); return -1; }
    void *p = realloc(*buf, n * elem);
    if (!p) { PyErr_NoMemory(); return -1; }
    *buf = p;
    *cap = n;
    return 0;
}
#define ENSURE(self, field, need) \
    ensure((void **)&(self)->field, &(self)->cap_##field, (size_t)(need), sizeof(*(self)->field))

static void track_refresh_box(Track *t) { z_to_box(t->kf.m, t->box); }

static int uf_find(int *uf, int x)
{
    while (uf[x] != x) {
        uf[x] = uf[uf[x]];
        x = uf[x];
    }
    return x;
}

static int cmp_key(const void *a, const void *b)
{
    double x = ((const SortKey *)a)->x1, y = ((const SortKey *)b)->x1;
    return (x > y) - (x < y);
}

/*
 * Optimal assignment of the listed tracks tl[0..nt) to the listed detections dl[0..nd).
 * similarity = IoU(track box or last observation, det) * (score if fuse); pairs below min_sim
 * or of different class are not allowed. Result: self->tassign[k] = listed det index or -1.
 * All scratch was reserved by the caller (reserve_scratch), so this cannot fail.
 */
/* Direction of motion from the observation about `delta` frames before the last one (OC-SORT
 * "inertia"); 0 when the track has fewer than two observations. */
static int track_direction(const Track *t, long delta, double *ux, double *uy)
{
    if (t->nhist < 2) return 0;
    int last = (t->hpos + HIST - 1) % HIST;
    int pick = -1;
    for (int k = 1; k < t->nhist; k++) {
        int idx = (last - k + HIST) % HIST;
        pick = idx;
        if (t->hist[last][2] - t->hist[idx][2] >= (double)delta) break;
    }
    double dx = t->hist[last][0] - t->hist[pick][0], dy = t->hist[last][1] - t->hist[pick][1];
    double n = sqrt(dx * dx + dy * dy);
    if (!(n > 1e-6)) return 0;
    *ux = dx / n;
    *uy = dy / n;
    return 1;
}

static void expand(const double *b, double buf, double *o)
{
    double w = b[2] - b[0], h = b[3] - b[1];
    o[0] = b[0] - buf * w;
    o[1] = b[1] - buf * h;
    o[2] = b[2] + buf * w;
    o[3] = b[3] + buf * h;
}

static void associate(CoreObject *self, const int *tl, int nt, const int *dl, int nd,
                      int use_obs, int fuse, double min_sim, double buf, double dir_w)
{
    int *tassign = self->tassign;
    for (int k = 0; k < nt; k++) tassign[k] = -1;
    if (nt == 0 || nd == 0) return;

    const double *dets = self->dets;
    SortKey *keys = self->keys;
    double maxw = 0.0;
    for (int k = 0; k < nd; k++) {
        const double *b = dets + (size_t)dl[k] * DET_COLS;
        keys[k].x1 = b[0];
        keys[k].idx = k;
        if (b[2] - b[0] > maxw) maxw = b[2] - b[0];
    }
    qsort(keys, (size_t)nd, sizeof(SortKey), cmp_key);

    /* Gated edges via a sweep over x: only detections whose x-extent can overlap. */
    Edge *edges = self->edges;
    int ne = 0;
    double limit = 1.0 - min_sim;
    for (int a = 0; a < nt; a++) {
        const Track *t = &self->tracks[tl[a]];
        double tb[4], db[4];
        /* Shadow tracks get a search region that grows with the time since they were seen. */
        double bt = buf;
        if (t->state == ST_LOST && self->p.shadow_buffer > 0)
            bt += fmin(self->p.shadow_buffer * (double)(t->fsu - 1), 1.0);
        expand(use_obs ? t->obs : t->box, bt, tb);
        double ux = 0.0, uy = 0.0;
        int has_dir = dir_w > 0 && track_direction(t, self->p.direction_delta, &ux, &uy);
        double lo = tb[0] - maxw * (1 + bt);
        int first = 0, hi = nd;
        while (first < hi) { /* first key with x1 > lo */
            int mid = (first + hi) / 2;
            if (keys[mid].x1 <= lo) first = mid + 1;
            else hi = mid;
        }
        for (int k = first; k < nd && keys[k].x1 < tb[2] + bt * maxw; k++) {
            int b = keys[k].idx;
            const double *draw = dets + (size_t)dl[b] * DET_COLS;
            if (draw[5] != t->cls) continue;
            expand(draw, bt, db);
            double s = iou(tb, db);
            if (!(s > 0.0)) continue; /* also drops NaN */
            if (fuse) s *= draw[4];
            if (!(s >= min_sim)) continue;
            double cost = 1.0 - s;
            if (has_dir) {
                /* OC-SORT velocity-direction consistency: reward detections that continue
                 * the track's observed direction of motion. */
                int last = (t->hpos + HIST - 1) % HIST;
                double dx = 0.5 * (draw[0] + draw[2]) - t->hist[last][0];
                double dy = 0.5 * (draw[1] + draw[3]) - t->hist[last][1];
                double n = sqrt(dx * dx + dy * dy);
                if (n > 1e-6) {
                    double c = (ux * dx + uy * dy) / n;
                    c = c > 1 ? 1 : (c < -1 ? -1 : c);
                    cost -= dir_w * draw[4] * (0.5 * PI_D - acos(c)) / PI_D;
                }
            }
            edges[ne].t = a;
            edges[ne].d = b;
            edges[ne].cost = cost;
            ne++;
        }
    }
    if (ne == 0) return;

    /* Connected components of the bipartite gated graph (nodes: tracks, then dets). */
    int nn = nt + nd;
    int *uf = self->uf, *cnt = self->cnt, *order = self->order;
    for (int i = 0; i < nn; i++) uf[i] = i;
    for (int e = 0; e < ne; e++) {
        int ra = uf_find(uf, edges[e].t), rb = uf_find(uf, nt + edges[e].d);
        if (ra != rb) uf[ra] = rb;
    }
    /* Counting sort of edges by component root. */
    for (int i = 0; i <= nn; i++) cnt[i] = 0;
    for (int e = 0; e < ne; e++) cnt[uf_find(uf, edges[e].t) + 1]++;
    for (int i = 0; i < nn; i++) cnt[i + 1] += cnt[i];
    for (int e = 0; e < ne; e++) {
        int r = uf_find(uf, edges[e].t);
        order[cnt[r]++] = e;
    }
    /* cnt[r] is now the end of root r's range; walk ranges in order. */
    int *rowmap = self->rowmap, *colmap = self->colmap, *rows = self->rows, *cols = self->cols;
    for (int i = 0; i < nt; i++) rowmap[i] = -1;
    for (int i = 0; i < nd; i++) colmap[i] = -1;
    int start = 0;
    while (start < ne) {
        int r = uf_find(uf, edges[order[start]].t);
        int end = cnt[r];
        assert(end > start);
        if (end - start == 1) {
            const Edge *e = &edges[order[start]];
            tassign[e->t] = e->d;
            start = end;
            continue;
        }
        int nr = 0, nc = 0;
        for (int q = start; q < end; q++) {
            const Edge *e = &edges[order[q]];
            if (rowmap[e->t] < 0) { rowmap[e->t] = nr; rows[nr++] = e->t; }
            if (colmap[e->d] < 0) { colmap[e->d] = nc; cols[nc++] = e->d; }
        }
        /* Extended square matrix: leaving a row and a column unmatched costs `limit`. */
        int dim = nr + nc;
        double *c = self->lapcost;
        for (int i = 0; i < dim; i++) {
            double *rowp = c + (size_t)i * dim;
            for (int j = 0; j < dim; j++) {
                if (i < nr) rowp[j] = j < nc ? LAP_BIG : 0.5 * limit;
                else rowp[j] = j < nc ? 0.5 * limit : 0.0;
            }
        }
        for (int q = start; q < end; q++) {
            const Edge *e = &edges[order[q]];
            c[(size_t)rowmap[e->t] * dim + colmap[e->d]] = e->cost;
        }
        LapWork w = {self->lapi, self->lapi + dim, self->lapi + 2 * dim, self->lapi + 3 * dim,
                     self->lapi + 4 * dim, self->lapi + 5 * dim, self->lapd, self->lapd + dim};
        lapjv(dim, c, &w);
        for (int i = 0; i < nr; i++) {
            int j = w.rowsol[i];
            if (j < nc && c[(size_t)i * dim + j] < LAP_BIG) tassign[rows[i]] = cols[j];
        }
        for (int i = 0; i < nr; i++) rowmap[rows[i]] = -1;
        for (int j = 0; j < nc; j++) colmap[cols[j]] = -1;
        start = end;
    }
}

/* Reserve every scratch buffer one update() may need, before any state changes. */
static int reserve_scratch(CoreObject *self, Py_ssize_t n)
{
    size_t nt = (size_t)self->ntracks, nd = (size_t)n;
    size_t nn = nt + nd, dim = nn;
    if (ENSURE(self, tracks, nt + nd) < 0) return -1;
    if (ENSURE(self, dmatch, nd) < 0 || ENSURE(self, tmatched, nt + 1) < 0 ||
        ENSURE(self, ilist_a, nt) < 0 ||
        ENSURE(self, ilist_b, nd) < 0 || ENSURE(self, tassign, nt) < 0 ||
        ENSURE(self, edges, nt * nd) < 0 || ENSURE(self, uf, nn) < 0 ||
        ENSURE(self, cnt, nn + 1) < 0 || ENSURE(self, order, nt * nd) < 0 ||
        ENSURE(self, rowmap, nt) < 0 || ENSURE(self, colmap, nd) < 0 ||
        ENSURE(self, rows, nt) < 0 || ENSURE(self, cols, nd) < 0 ||
        ENSURE(self, keys, nd) < 0 || ENSURE(self, lapcost, dim * dim) < 0 ||
        ENSURE(self, lapi, 6 * dim) < 0 || ENSURE(self, lapd, 2 * dim) < 0)
        return -1;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Input                                                                                       */

/* A buffer's item format without its native/little-endian prefix ("d", "f", ...). */
static const char *item_format(const Py_buffer *view)
{
    const char *fmt = view->format ? view->format : "B";
    if (fmt[0] == '@' || fmt[0] == '=' || fmt[0] == '<') fmt++;
    return fmt;
}

/* Read and validate an (N, 6) float32/float64 buffer of any strides into self->dets. */
static Py_ssize_t read_dets(CoreObject *self, PyObject *obj)
{
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_RECORDS_RO) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError,
                     "dets must be a float32/float64 array of shape (N, 6) or None, got %.100s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    Py_ssize_t n = -1;
    const char *fmt = item_format(&view);
    int is_double = strcmp(fmt, "d") == 0, is_float = strcmp(fmt, "f") == 0;
    if (!is_double && !is_float) {
        PyErr_Format(PyExc_ValueError,
                     "dets must be native float32 or float64, got buffer format '%.20s'",
                     view.format ? view.format : "B");
        goto done;
    }
    if (view.ndim != 2 || view.shape[1] != DET_COLS) {
        if (view.ndim == 2)
            PyErr_Format(PyExc_ValueError,
                         "dets must have shape (N, 6): x1, y1, x2, y2, score, class_id; got "
                         "(%zd, %zd)", view.shape[0], view.shape[1]);
        else
            PyErr_Format(PyExc_ValueError,
                         "dets must be 2-D with shape (N, 6), got %d dimension(s)", view.ndim);
        goto done;
    }
    if (view.shape[0] > MAX_DETS) {
        PyErr_Format(PyExc_ValueError, "dets has %zd rows; at most %d per frame are accepted",
                     view.shape[0], MAX_DETS);
        goto done;
    }
    Py_ssize_t rows = view.shape[0];
    if (reserve_scratch(self, rows) < 0 || ENSURE(self, dets, (size_t)rows * DET_COLS) < 0)
        goto done;
    static const char *names[DET_COLS] = {"x1", "y1", "x2", "y2", "score", "class_id"};
    const char *base = (const char *)view.buf;
    for (Py_ssize_t i = 0; i < rows; i++) {
        double *row = self->dets + (size_t)i * DET_COLS;
        for (int j = 0; j < DET_COLS; j++) {
            const char *p = base + i * view.strides[0] + j * view.strides[1];
            double x;
            if (is_double) {
                memcpy(&x, p, sizeof(double));
            } else {
                float f;
                memcpy(&f, p, sizeof(float));
                x = (double)f;
            }
            if (!isfinite(x)) {
                PyErr_Format(PyExc_ValueError, "dets row %zd: %s is not finite", i, names[j]);
                goto done;
            }
            if (j < 4 && fabs(x) > MAX_COORD) {
                PyErr_Format(PyExc_ValueError, "dets row %zd: %s is out of range (|%s| > 1e7)", i,
                             names[j], names[j]);
                goto done;
            }
            row[j] = x;
        }
        /* PyErr_Format has no float conversions: format numbers with snprintf. */
        char msg[160];
        if (row[2] < row[0]) {
            snprintf(msg, sizeof msg, "x2 < x1 (%.6g < %.6g)", row[2], row[0]);
        } else if (row[3] < row[1]) {
            snprintf(msg, sizeof msg, "y2 < y1 (%.6g < %.6g)", row[3], row[1]);
        } else if (row[4] < 0) {
            snprintf(msg, sizeof msg, "score is negative (%.6g)", row[4]);
        } else {
            continue;
        }
        PyErr_Format(PyExc_ValueError, "dets row %zd: %s", i, msg);
        goto done;
    }
    n = rows;
done:
    PyBuffer_Release(&view);
    return n;
}

/* ------------------------------------------------------------------------------------------ */
/* Lifecycle                                                                                   */

static void track_push_hist(const CoreObject *self, Track *t, const double *det)
{
    t->hist[t->hpos][0] = 0.5 * (det[0] + det[2]);
    t->hist[t->hpos][1] = 0.5 * (det[1] + det[3]);
    t->hist[t->hpos][2] = (double)self->frame_count;
    t->hpos = (t->hpos + 1) % HIST;
    if (t->nhist < HIST) t->nhist++;
}

/* After the filter took `det` in (initiate or update): remember it as the last observation. */
static void track_remember(const CoreObject *self, Track *t, const double *det)
{
    t->kf_obs = t->kf;
    memcpy(t->obs, det, 4 * sizeof(double));
    track_push_hist(self, t, det);
    t->score = det[4];
    track_refresh_box(t);
}

static void track_observe(CoreObject *self, Track *t, const double *det)
{
    double z[4];
    box_to_z(det, z);
    const KFParams *kp = &self->p.kfp;
    /* (gaps beyond ORU_MAX_GAP frames keep the plain prediction: bounded work per update) */
    if (self->p.observation_centric && t->fsu > 1 && t->fsu <= ORU_MAX_GAP) {
        /* OC-SORT re-update: replay the gap from the last observation along a straight line
         * between the two observations instead of trusting the free-running prediction. */
        long gap = t->fsu;
        double zi[4], bi[4];
        t->kf = t->kf_obs;
        for (long s = 1; s < gap; s++) {
            double f = (double)s / (double)gap;
            for (int k = 0; k < 4; k++) bi[k] = t->obs[k] + f * (det[k] - t->obs[k]);
            box_to_z(bi, zi);
            kf_predict(&t->kf, kp);
            kf_update(&t->kf, zi, kp);
        }
        kf_predict(&t->kf, kp);
    }
    kf_update(&t->kf, z, kp);
    track_remember(self, t, det);
    t->fsu = 0;
    t->misses = 0;
    t->hits++;
}

static void track_confirm(CoreObject *self, Track *t)
{
    t->state = ST_ACTIVE;
    if (t->id == 0) t->id = self->next_id++;
}

static void predict_all(CoreObject *self)
{
    for (Py_ssize_t i = 0; i < self->ntracks; i++) {
        Track *t = &self->tracks[i];
        /* Lost tracks: stop growing/shrinking (as ByteTrack); never let height go negative. */
        if (t->state == ST_LOST || t->kf.m[3] + t->kf.m[7] <= 0) t->kf.m[7] = 0.0;
        kf_predict(&t->kf, &self->p.kfp);
        if (t->kf.m[2] <= 0) t->kf.m[2] = 1e-3;
        t->fsu++;
        track_refresh_box(t);
    }
}

static void compact(CoreObject *self)
{
    Py_ssize_t w = 0;
    for (Py_ssize_t i = 0; i < self->ntracks; i++) {
        if (self->tracks[i].state == ST_DEAD) continue;
        if (w != i) self->tracks[w] = self->tracks[i];
        w++;
    }
    self->ntracks = w;
}

/* Run one association stage over tracks in `want_state` (and its second state, or -1) that are
 * still unmatched this frame, and detections in [lo, hi) score range still unmatched. */
static void stage(CoreObject *self, Py_ssize_t n, int st1, int st2, double dlo, double dhi,
                  int use_obs, int fuse, double min_sim, double buf, double dir_w,
                  unsigned char *tmatched)
{
    int *tl = self->ilist_a, *dl = self->ilist_b;
    int nt = 0, nd = 0;
    for (Py_ssize_t i = 0; i < self->ntracks; i++) {
        const Track *t = &self->tracks[i];
        if (!tmatched[i] && (t->state == st1 || t->state == st2)) tl[nt++] = (int)i;
    }
    for (Py_ssize_t j = 0; j < n; j++) {
        double s = self->dets[(size_t)j * DET_COLS + 4];
        const double *b = self->dets + (size_t)j * DET_COLS;
        if (self->dmatch[j] < 0 && s >= dlo && s < dhi && b[2] > b[0] && b[3] > b[1])
            dl[nd++] = (int)j;
    }
    associate(self, tl, nt, dl, nd, use_obs, fuse, min_sim, buf, dir_w);
    for (int a = 0; a < nt; a++) {
        int b = self->tassign[a];
        if (b < 0) continue;
        Track *t = &self->tracks[tl[a]];
        const double *det = self->dets + (size_t)dl[b] * DET_COLS;
        self->dmatch[dl[b]] = tl[a];
        tmatched[tl[a]] = 1;
        track_observe(self, t, det);
        if (t->state == ST_LOST) track_confirm(self, t);
        else if (t->state == ST_TENTATIVE && t->hits >= self->p.probation_age)
            track_confirm(self, t);
    }
}

static PyObject *write_rows(CoreObject *self, int want_state)
{
    Py_ssize_t m = 0;
    for (Py_ssize_t i = 0; i < self->ntracks; i++) m += self->tracks[i].state == want_state;
    PyObject *out = PyByteArray_FromStringAndSize(NULL, m * OUT_COLS * (Py_ssize_t)sizeof(double));
    if (!out) return NULL;
    double *o = (double *)PyByteArray_AS_STRING(out);
    for (Py_ssize_t i = 0; i < self->ntracks; i++) {
        const Track *t = &self->tracks[i];
        if (t->state != want_state) continue;
        o[0] = t->box[0];
        o[1] = t->box[1];
        o[2] = t->box[2];
        o[3] = t->box[3];
        o[4] = (double)t->id;
        o[5] = t->score;
        o[6] = t->cls;
        o[7] = (double)t->fsu;
        o += OUT_COLS;
    }
    return out;
}

static PyObject *Core_update(CoreObject *self, PyObject *arg)
{
    const Params *p = &self->p;
    if (arg == Py_None) {
        /* Predict-only frame: no lifecycle transitions except shadow expiry. */
        self->frame_count++;
        predict_all(self);
        for (Py_ssize_t i = 0; i < self->ntracks; i++) {
            Track *t = &self->tracks[i];
            if (t->state == ST_LOST && t->fsu > p->max_shadow_age) t->state = ST_DEAD;
        }
        compact(self);
        return write_rows(self, ST_ACTIVE);
    }
    /* Validate and reserve everything first: an error leaves the tracker untouched. */
    Py_ssize_t n = read_dets(self, arg);
    if (n < 0) return NULL;
    unsigned char *tmatched = self->tmatched;
    memset(tmatched, 0, (size_t)self->ntracks + 1);

    self->frame_count++;
    predict_all(self);
    for (Py_ssize_t j = 0; j < n; j++) self->dmatch[j] = -1;

    /* 1: high-score detections vs active and lost tracks (predicted boxes); with
     * active_first, tracks seen last frame choose first and shadow tracks take the rest. */
    if (p->active_first) {
        stage(self, n, ST_ACTIVE, -1, p->high_thresh, HUGE_VAL, 0, p->fuse_score,
              p->match_thresh, p->iou_buffer, p->direction_weight, tmatched);
        stage(self, n, ST_LOST, -1, p->high_thresh, HUGE_VAL, 0, p->fuse_score,
              p->match_thresh, p->iou_buffer, p->direction_weight, tmatched);
    } else {
        stage(self, n, ST_ACTIVE, ST_LOST, p->high_thresh, HUGE_VAL, 0, p->fuse_score,
              p->match_thresh, p->iou_buffer, p->direction_weight, tmatched);
    }
    /* 1b: OC-SORT recovery: leftovers vs the tracks' last observed boxes. */
    if (p->recovery_thresh > 0)
        stage(self, n, ST_ACTIVE, ST_LOST, p->high_thresh, HUGE_VAL, 1, 0, p->recovery_thresh,
              0.0, 0.0, tmatched);
    /* 2: low-score detections vs still-unmatched active tracks (ByteTrack). */
    stage(self, n, ST_ACTIVE, -1, p->low_thresh, p->high_thresh, 0, 0, p->low_match_thresh,
          0.0, 0.0, tmatched);
    /* 3: tentative tracks vs remaining high-score detections. */
    stage(self, n, ST_TENTATIVE, -1, p->high_thresh, HUGE_VAL, 0, p->fuse_score,
          p->tentative_match_thresh, 0.0, 0.0, tmatched);

    /* Unmatched tracks: tentative -> early termination; active -> lost; lost -> expire. */
    Py_ssize_t nold = self->ntracks;
    for (Py_ssize_t i = 0; i < nold; i++) {
        Track *t = &self->tracks[i];
        if (tmatched[i]) continue;
        if (t->state == ST_TENTATIVE) {
            if (++t->misses > p->max_tentative_misses) t->state = ST_DEAD;
        } else if (t->state == ST_ACTIVE && t->fsu > p->coast_frames) {
            t->state = ST_LOST;
        }
        if (t->state == ST_LOST && t->fsu > p->max_shadow_age) t->state = ST_DEAD;
    }

    /* New tentative tracks from unmatched confident detections. */
    for (Py_ssize_t j = 0; j < n; j++) {
        const double *det = self->dets + (size_t)j * DET_COLS;
        if (self->dmatch[j] >= 0 || det[4] < p->new_track_thresh || det[4] < p->high_thresh)
            continue;
        if (!(det[2] > det[0] && det[3] > det[1])) continue;
        assert(self->ntracks < (Py_ssize_t)self->cap_tracks);
        Track *t = &self->tracks[self->ntracks++];
        memset(t, 0, sizeof(*t));
        double z[4];
        box_to_z(det, z);
        kf_initiate(&t->kf, z, &p->kfp);
        track_remember(self, t, det);
        t->cls = det[5];
        t->hits = 1;
        t->state = ST_TENTATIVE;
        if (p->probation_age <= 1 || self->frame_count == 1) track_confirm(self, t);
    }
    compact(self);
    return write_rows(self, ST_ACTIVE);
}

static PyObject *Core_lost(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    return write_rows(self, ST_LOST);
}

static PyObject *Core_reset(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    self->ntracks = 0;
    self->frame_count = 0; /* next_id is kept: IDs are never reused in a tracker's life */
    Py_RETURN_NONE;
}

static PyObject *Core_get_frame_count(CoreObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromLongLong(self->frame_count);
}

static PyObject *Core_get_num_tracks(CoreObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromSsize_t(self->ntracks);
}

static int Core_init(CoreObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"high_thresh", "low_thresh", "new_track_thresh", "match_thresh",
                             "low_match_thresh", "tentative_match_thresh", "recovery_thresh",
                             "iou_buffer", "shadow_buffer", "direction_weight",
                             "direction_delta",
                             "fuse_score", "observation_centric", "active_first",
                             "probation_age",
                             "max_tentative_misses", "max_shadow_age", "coast_frames",
                             "std_weight_position", "std_weight_measurement",
                             "std_weight_velocity", NULL};
    Params p;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "$ddddddddddlpppllllddd", kwlist,
                                     &p.high_thresh, &p.low_thresh, &p.new_track_thresh,
                                     &p.match_thresh, &p.low_match_thresh,
                                     &p.tentative_match_thresh, &p.recovery_thresh, &p.iou_buffer,
                                     &p.shadow_buffer, &p.direction_weight, &p.direction_delta,
                                     &p.fuse_score, &p.observation_centric, &p.active_first,
                                     &p.probation_age, &p.max_tentative_misses,
                                     &p.max_shadow_age, &p.coast_frames, &p.kfp.w_pos,
                                     &p.kfp.w_meas, &p.kfp.w_vel))
        return -1;
    /* The wrapper checks ranges with friendlier messages; this guards the C invariants. */
    if (p.probation_age < 1 || p.direction_delta < 1 || !(p.iou_buffer >= 0) || !(p.shadow_buffer >= 0) ||
        p.max_tentative_misses < 0 || p.max_shadow_age < 0 || p.coast_frames < 0 ||
        !(p.kfp.w_pos > 0) || !(p.kfp.w_vel > 0) || !(p.kfp.w_meas > 0) ||
        !isfinite(p.kfp.w_pos) || !isfinite(p.kfp.w_vel) || !isfinite(p.kfp.w_meas)) {
        PyErr_SetString(PyExc_ValueError, "invalid tracker parameters");
        return -1;
    }
    self->p = p;
    self->ntracks = 0;
    self->frame_count = 0;
    if (self->next_id < 1) self->next_id = 1;
    return 0;
}

static void Core_dealloc(CoreObject *self)
{
    free(self->tracks);
    free(self->dets);
    free(self->dmatch);
    free(self->tmatched);
    free(self->ilist_a);
    free(self->ilist_b);
    free(self->tassign);
    free(self->edges);
    free(self->uf);
    free(self->cnt);
    free(self->order);
    free(self->rowmap);
    free(self->colmap);
    free(self->rows);
    free(self->cols);
    free(self->keys);
    free(self->lapcost);
    free(self->lapi);
    free(self->lapd);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Core_methods[] = {
    {"update", (PyCFunction)Core_update, METH_O,
     "update(dets or None) -> bytearray of float64 rows (8 columns), active tracks"},
    {"lost", (PyCFunction)Core_lost, METH_NOARGS, "lost() -> bytearray of shadow-track rows"},
    {"reset", (PyCFunction)Core_reset, METH_NOARGS, "drop all tracks; IDs are not reused"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Core_getset[] = {
    {"frame_count", (getter)Core_get_frame_count, NULL, "update() calls since start/reset",
     NULL},
    {"num_tracks", (getter)Core_get_num_tracks, NULL, "tracks held (all states)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "edge_agent.tracking._tracker.Core",
    .tp_basicsize = sizeof(CoreObject),
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Tracker core; use edge_agent.tracking.Tracker.",
    .tp_methods = Core_methods,
    .tp_getset = Core_getset,
    .tp_init = (initproc)Core_init,
    .tp_new = PyType_GenericNew,
};

/* ------------------------------------------------------------------------------------------ */
/* lap(cost): the assignment solver on its own, for tests.                                    */

static PyObject *mod_lap(PyObject *Py_UNUSED(mod), PyObject *obj)
{
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_RECORDS_RO) < 0) return NULL;
    PyObject *res = NULL;
    double *cost = NULL;
    int *ibuf = NULL;
    double *dbuf = NULL;
    if (view.ndim != 2 || strcmp(item_format(&view), "d") != 0) {
        PyErr_SetString(PyExc_ValueError, "cost must be a 2-D float64 array");
        goto done;
    }
    Py_ssize_t nr = view.shape[0], nc = view.shape[1];
    if (nr > 5000 || nc > 5000) {
        PyErr_SetString(PyExc_ValueError, "cost matrix larger than 5000 x 5000");
        goto done;
    }
    Py_ssize_t dim = nr > nc ? nr : nc;
    cost = malloc(sizeof(double) * (size_t)(dim * dim + 1));
    ibuf = malloc(sizeof(int) * (size_t)(6 * dim + 1));
    dbuf = malloc(sizeof(double) * (size_t)(2 * dim + 1));
    if (!cost || !ibuf || !dbuf) {
        PyErr_NoMemory();
        goto done;
    }
    /* Pad to square with zeros: dummy rows/columns absorb the surplus at no cost. */
    for (Py_ssize_t i = 0; i < dim; i++)
        for (Py_ssize_t j = 0; j < dim; j++) {
            double x = 0.0;
            if (i < nr && j < nc) {
                memcpy(&x, (const char *)view.buf + i * view.strides[0] + j * view.strides[1],
                       sizeof(double));
                if (!isfinite(x)) {
                    PyErr_Format(PyExc_ValueError, "cost[%zd, %zd] is not finite", i, j);
                    goto done;
                }
            }
            cost[i * dim + j] = x;
        }
    if (dim > 0) {
        LapWork w = {ibuf, ibuf + dim, ibuf + 2 * dim, ibuf + 3 * dim, ibuf + 4 * dim,
                     ibuf + 5 * dim, dbuf, dbuf + dim};
        lapjv((int)dim, cost, &w);
    }
    res = PyList_New(nr);
    if (!res) goto done;
    for (Py_ssize_t i = 0; i < nr; i++) {
        int j = ibuf[i]; /* rowsol */
        PyObject *v = PyLong_FromLong(j < nc ? j : -1);
        if (!v) {
            Py_CLEAR(res);
            goto done;
        }
        PyList_SET_ITEM(res, i, v);
    }
done:
    free(cost);
    free(ibuf);
    free(dbuf);
    PyBuffer_Release(&view);
    return res;
}

static PyMethodDef module_methods[] = {
    {"lap", (PyCFunction)mod_lap, METH_O,
     "lap(cost) -> list: column assigned to each row (-1 if none), minimising the total cost"
     " of a dense float64 matrix (rectangular allowed). Exposed for tests."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef tracker_module = {
    PyModuleDef_HEAD_INIT, "_tracker", "IOU/Kalman multi-object tracker core (C99).", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__tracker(void)
{
    if (PyType_Ready(&CoreType) < 0) return NULL;
    PyObject *m = PyModule_Create(&tracker_module);
    if (!m) return NULL;
    Py_INCREF(&CoreType);
    if (PyModule_AddObject(m, "Core", (PyObject *)&CoreType) < 0) {
        Py_DECREF(&CoreType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
