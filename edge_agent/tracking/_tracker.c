/*
 * IOU/Kalman multi-object tracker (C99 CPython extension, no third-party C code).
 *
 * One `Core` object per camera. Per frame: predict every track with a constant-velocity Kalman
 * filter over (cx, cy, aspect, h); associate detections in stages (ByteTrack / DeepStream style)
 * with an optimal assignment (Jonker-Volgenant) solved per connected component of the gated
 * IoU graph; then run the lifecycle (tentative -> active -> lost/shadow -> removed).
 *
 * Score thresholds apply to each detection's "association score": with `adaptive` on, its score
 * placed on the range of its class's recent scores (trackmath.h ScoreWindow), so the same
 * thresholds serve detectors whose scores live on different scales; otherwise the raw score.
 *
 * The Python wrapper (edge_agent/tracking/__init__.py) validates parameters, turns seconds into
 * frames and the returned bytearray into a NumPy array; this file validates the detection buffer
 * itself. The Kalman filter, LAPJV and the score window are in trackmath.c (no Python).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dcf.h"
#include "trackmath.h"

#define ST_TENTATIVE 0
#define ST_ACTIVE 1
#define ST_LOST 2
#define ST_DEAD 3

#define OUT_COLS 8
#define DET_COLS 6
#define PI_D 3.14159265358979323846
/* Distinct class ids with a score window each: the heads of a detector have a few classes. */
#define MAX_CLASSES 1024
#define HIST 4 /* observation centres kept per track, for the motion direction */
/* The detector's miss rate per class: decayed counts over about this many hit-or-miss frames
 * of confirmed tracks, and used only once this many are in. */
#define MISS_WINDOW 500.0
#define MISS_MIN_EVIDENCE 100.0
/* A miss rate this many times miss_rate_ref or more scales the durations no further: about the
 * highest seen on the MOT15 sequences (ACF ETH-Sunnyday, 0.37 / 0.15), so the rule is not
 * extrapolated beyond what was measured (s^3 = 15.6: coasting 0.1 s becomes 1.6 s at most). */
#define MISS_SCALE_MAX 2.5
/* Largest number of detections accepted per frame: keeps scratch sizes sane. */
#define MAX_DETS 100000
/* Coordinates beyond this are an upstream bug, and would overflow the Kalman variances. */
#define MAX_COORD 1e7
/* Tracks with a visual model at most (14 KiB each); tracks beyond it follow their prediction. */
#define MAX_VISUAL 512

/* ------------------------------------------------------------------------------------------ */
/* Tracker object                                                                              */

typedef struct {
    KF kf;
    double obs[4];  /* last observed box x1, y1, x2, y2 */
    double box[4];  /* current state as a box (refreshed after predict/update) */
    double hist[HIST][3]; /* ring of observed centres: cx, cy, frame */
    int nhist, hpos;
    double score, cls;
    long long id;   /* 0 while tentative */
    long fsu;       /* frames since the last matched detection */
    int state, hits, misses;
    int coasted;    /* lost, but its predicted box is reported this frame (coast_frames) */
    int rate;       /* index of its class's MissRate, -1 if none */
    int flt;        /* its correlation filter's slot, -1 if none */
    int looked;     /* its filter looked for it in this frame's picture */
    int seen;       /* and found it (PSR >= DCF_PSR_MIN) */
    int mixed;      /* found a patch that looks more like an overlapping track: not seen */
    int cand;       /* tentative from a detection under new_track_thresh (a candidate) */
    int followed;   /* seen by its filter on a frame without detections since its birth */
    int expired;    /* a shadow whose time ran out on a frame without detections */
    int last_call;  /* a shadow whose last re-matchable frame had no detections: it waits for
                     * the detector's next attempt */
    double vis[2];  /* where (centre), when seen */
} Track;

/* How often the detector misses a class's confirmed tracks: frames inside gaps that ended in
 * a re-match, against matched frames (decayed). Gaps that end the track (the object left) are
 * not counted: they say nothing about the detector. */
typedef struct {
    double cls;
    double hits, misses;
} MissRate;

/*
 * The core's parameters, declared once: this table makes the Params fields, parse_params'
 * keyword list and format, and its range checks. X(C type, name, PyArg format, lo, hi).
 * Meanings: PARAMS in __init__.py, which also checks the user-facing (narrower) ranges with
 * friendlier messages; the wrapper turns seconds into frames (max_shadow_age, coast_frames)
 * and rescales the Kalman weights to the frame rate. frame_width/height 0 = unknown.
 */
#define PARAM_TABLE(X)                                  \
    X(double, high_thresh, "d", 0, 1e6)                 \
    X(double, low_thresh, "d", 0, 1e6)                  \
    X(double, new_track_thresh, "d", 0, 1e6)            \
    X(double, match_thresh, "d", 0, 1)                  \
    X(double, low_match_thresh, "d", 0, 1)              \
    X(double, tentative_match_thresh, "d", 0, 1)        \
    X(double, recovery_thresh, "d", 0, 1)               \
    X(double, iou_buffer, "d", 0, 2)                    \
    X(double, direction_weight, "d", 0, 10)             \
    X(long, direction_delta, "l", 1, 1000)              \
    X(int, fuse_score, "p", 0, 1)                       \
    X(int, adaptive, "p", 0, 1)                         \
    X(long, score_window, "l", 1, 1000000)              \
    X(long, probation_age, "l", 1, 10000)               \
    X(long, max_shadow_age, "l", 0, 1e9)                \
    X(long, shadow_min_frames, "l", 0, 1000000)         \
    X(long, coast_frames, "l", 0, 1e9)                  \
    X(double, coast_overlap, "d", 0, 1)                 \
    X(double, miss_rate_ref, "d", 0, 1)                 \
    X(double, frame_width, "d", 0, 1e6)                 \
    X(double, frame_height, "d", 0, 1e6)                \
    X(double, std_weight_position, "d", 1e-12, 1e6)     \
    X(double, std_weight_measurement, "d", 1e-12, 1e6)  \
    X(double, std_weight_velocity, "d", 1e-12, 1e6)

#define PARAM_FIELD(type, name, fmt, lo, hi) type name;
typedef struct {
    PARAM_TABLE(PARAM_FIELD)
    KFParams kfp; /* the std_weight_* as the Kalman filter takes them */
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
    double *dscore;        size_t cap_dscore;    /* per detection: association score */
    int *dwin;             size_t cap_dwin;      /* per detection: its class's score window */
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
    SortKey *keys;         size_t cap_keys;      /* one stage's detections by x1 */
    SortKey *xkeys;        size_t cap_xkeys;     /* the frame's detections by (x1, index) */
    int *dpos;             size_t cap_dpos;      /* per detection: its place in a stage, or -1 */
    Py_ssize_t nxkeys;
    double *lapcost;       size_t cap_lapcost;
    int *lapi;             size_t cap_lapi;      /* 6 int arrays of dim */
    double *lapd;          size_t cap_lapd;      /* 2 double arrays of dim */
    ScoreWindow *wins;     size_t cap_wins;      /* one per class seen (adaptive) */
    int nwins;
    MissRate rates[MAX_CLASSES];                 /* one per class that started a track */
    int nrates;
    /* visual tracking (update with a frame) */
    DcfPlan *plan;                               /* made on the first frame */
    DcfWork *work;
    DcfFilter *flt;        size_t cap_flt;       /* filter slots */
    unsigned char *flt_used; size_t cap_flt_used;
    int img_w, img_h;                            /* the stream's frame size; 0 before one */
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

/* By x1, then by index: a total order, so ties come out the same whatever qsort does. */
static int cmp_key(const void *a, const void *b)
{
    const SortKey *p = (const SortKey *)a, *q = (const SortKey *)b;
    if (p->x1 != q->x1) return p->x1 > q->x1 ? 1 : -1;
    return (p->idx > q->idx) - (p->idx < q->idx);
}

/* The frame's detections sorted by x1 once; each stage takes its own in that order. */
static void sort_frame_dets(CoreObject *self, Py_ssize_t n)
{
    for (Py_ssize_t j = 0; j < n; j++) {
        self->xkeys[j].x1 = self->dets[(size_t)j * DET_COLS];
        self->xkeys[j].idx = (int)j;
        self->dpos[j] = -1;
    }
    if (n > 1) qsort(self->xkeys, (size_t)n, sizeof(SortKey), cmp_key); /* (never NULL, 0) */
    self->nxkeys = n;
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
        self->dpos[dl[k]] = k;
        if (b[2] - b[0] > maxw) maxw = b[2] - b[0];
    }
    int m = 0; /* this stage's detections in the frame's x order (dl is by index) */
    for (Py_ssize_t i = 0; i < self->nxkeys; i++) {
        int k = self->dpos[self->xkeys[i].idx];
        if (k < 0) continue;
        keys[m].x1 = self->xkeys[i].x1;
        keys[m].idx = k;
        m++;
    }
    assert(m == nd);
    for (int k = 0; k < nd; k++) self->dpos[dl[k]] = -1;

    /* Gated edges via a sweep over x: only detections whose x-extent can overlap. */
    Edge *edges = self->edges;
    int ne = 0;
    double limit = 1.0 - min_sim;
    for (int a = 0; a < nt; a++) {
        const Track *t = &self->tracks[tl[a]];
        double tb[4], db[4];
        double bt = buf;
        box_expand(use_obs ? t->obs : t->box, bt, tb);
        /* Where its correlation filter found it (seen tracks): the same box at that centre. */
        double vb[4];
        int vis = !use_obs && t->seen;
        if (vis) {
            double dx = t->vis[0] - 0.5 * (tb[0] + tb[2]), dy = t->vis[1] - 0.5 * (tb[1] + tb[3]);
            vb[0] = tb[0] + dx;
            vb[1] = tb[1] + dy;
            vb[2] = tb[2] + dx;
            vb[3] = tb[3] + dy;
        }
        double ux = 0.0, uy = 0.0;
        int has_dir = dir_w > 0 && track_direction(t, self->p.direction_delta, &ux, &uy);
        double x_lo = vis ? dmin(tb[0], vb[0]) : tb[0], x_hi = vis ? dmax(tb[2], vb[2]) : tb[2];
        double lo = x_lo - maxw * (1 + bt);
        int first = 0, hi = nd;
        while (first < hi) { /* first key with x1 > lo */
            int mid = (first + hi) / 2;
            if (keys[mid].x1 <= lo) first = mid + 1;
            else hi = mid;
        }
        for (int k = first; k < nd && keys[k].x1 < x_hi + bt * maxw; k++) {
            int b = keys[k].idx;
            const double *draw = dets + (size_t)dl[b] * DET_COLS;
            if (draw[5] != t->cls) continue;
            box_expand(draw, bt, db);
            double s = box_iou(tb, db);
            /* motion and appearance, equally: the mean of the overlaps with the predicted box
             * and with the box where the track's look is */
            if (vis) s = 0.5 * (s + box_iou(vb, db));
            if (!(s > 0.0)) continue; /* also drops NaN */
            double ascore = self->dscore[dl[b]];
            if (fuse) s *= ascore;
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
                    cost -= dir_w * ascore * (0.5 * PI_D - acos_fast(c)) / PI_D;
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
        /* Square matrix of side max(nr, nc), costs clipped at `limit`, padded with `limit`: a
         * pair at `limit` means "both unmatched", which makes the optimum the same as leaving
         * each unmatched row and column at limit / 2 (the totals differ by a constant), at a
         * quarter of the cells of the (nr + nc) square. */
        int dim = nr > nc ? nr : nc;
        double *c = self->lapcost;
        for (size_t q = 0; q < (size_t)dim * (size_t)dim; q++) c[q] = limit;
        for (int q = start; q < end; q++) {
            const Edge *e = &edges[order[q]];
            double *cell = &c[(size_t)rowmap[e->t] * dim + colmap[e->d]];
            *cell = e->cost < limit ? e->cost : limit;
        }
        LapWork w = {self->lapi, self->lapi + dim, self->lapi + 2 * dim, self->lapi + 3 * dim,
                     self->lapi + 4 * dim, self->lapi + 5 * dim, self->lapd, self->lapd + dim};
        lapjv(dim, c, &w);
        for (int i = 0; i < nr; i++) {
            int j = w.rowsol[i];
            if (j < nc && c[(size_t)i * dim + j] < limit) tassign[rows[i]] = cols[j];
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
        ENSURE(self, keys, nd) < 0 || ENSURE(self, xkeys, nd) < 0 ||
        ENSURE(self, dpos, nd) < 0 || ENSURE(self, lapcost, dim * dim) < 0 ||
        ENSURE(self, lapi, 6 * dim) < 0 || ENSURE(self, lapd, 2 * dim) < 0)
        return -1;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Input                                                                                       */

/* Index of the score window of class `cls`, created when new; -1 with an exception set. */
static int find_window(CoreObject *self, double cls, int hint)
{
    if (hint >= 0 && hint < self->nwins && self->wins[hint].cls == cls) return hint;
    for (int k = 0; k < self->nwins; k++)
        if (self->wins[k].cls == cls) return k;
    if (self->nwins >= MAX_CLASSES) {
        PyErr_Format(PyExc_ValueError, "more than %d distinct class ids in one tracker",
                     MAX_CLASSES);
        return -1;
    }
    if (ENSURE(self, wins, (size_t)self->nwins + 1) < 0) return -1;
    if (score_window_init(&self->wins[self->nwins], cls, (int)self->p.score_window) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return self->nwins++;
}

/* self->dwin[j]: the window of each detection's class. A new class's empty window is all that
 * a failure here leaves behind (tracks are untouched). */
static int assign_windows(CoreObject *self, Py_ssize_t n)
{
    int hint = -1;
    for (Py_ssize_t j = 0; j < n; j++) {
        hint = find_window(self, self->dets[(size_t)j * DET_COLS + 5], hint);
        if (hint < 0) return -1;
        self->dwin[j] = hint;
    }
    return 0;
}

/* Association scores of this frame's detections: raw, or (adaptive) each score placed between
 * the low and high quantiles of its class's window (this frame included) and clipped to 0..1. */
static void score_dets(CoreObject *self, Py_ssize_t n)
{
    const double *d = self->dets;
    if (!self->p.adaptive) {
        for (Py_ssize_t j = 0; j < n; j++) self->dscore[j] = d[(size_t)j * DET_COLS + 4];
        return;
    }
    for (Py_ssize_t j = 0; j < n; j++) {
        const double *b = d + (size_t)j * DET_COLS;
        if (b[2] > b[0] && b[3] > b[1]) score_window_push(&self->wins[self->dwin[j]], b[4]);
    }
    for (int k = 0; k < self->nwins; k++) score_window_refresh(&self->wins[k]);
    for (Py_ssize_t j = 0; j < n; j++)
        self->dscore[j] = score_window_normalise(&self->wins[self->dwin[j]],
                                                 d[(size_t)j * DET_COLS + 4]);
}

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
    if (reserve_scratch(self, rows) < 0 || ENSURE(self, dets, (size_t)rows * DET_COLS) < 0 ||
        ENSURE(self, dscore, (size_t)rows) < 0 || ENSURE(self, dwin, (size_t)rows) < 0)
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
    if (self->p.adaptive && assign_windows(self, rows) < 0) goto done;
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
    memcpy(t->obs, det, 4 * sizeof(double));
    track_push_hist(self, t, det);
    t->score = det[4];
    track_refresh_box(t);
}

/* The miss-rate entry of class `cls`, created when new; -1 once MAX_CLASSES are in use (that
 * class's durations are then never scaled). */
static int find_rate(CoreObject *self, double cls)
{
    for (int k = 0; k < self->nrates; k++)
        if (self->rates[k].cls == cls) return k;
    if (self->nrates >= MAX_CLASSES) return -1;
    MissRate *r = &self->rates[self->nrates];
    r->cls = cls;
    r->hits = r->misses = 0.0;
    return self->nrates++;
}

/* A confirmed track is matched after t->misses frames with detections that missed it (frames
 * without detection, update(None), say nothing about the detector). */
static void count_match(CoreObject *self, const Track *t)
{
    if (t->rate < 0) return;
    MissRate *r = &self->rates[t->rate];
    r->hits += 1.0;
    r->misses += (double)t->misses;
    double n = r->hits + r->misses;
    if (n > MISS_WINDOW) {
        r->hits *= MISS_WINDOW / n;
        r->misses *= MISS_WINDOW / n;
    }
}

/* s: t's class's miss rate over miss_rate_ref, from 1 (a detector that misses as rarely or
 * less, or too little evidence yet) up to MISS_SCALE_MAX. A strong detector's gaps are mostly
 * occlusions and exits, where nobody is there to report; a detector that misses s times as
 * often also misses people who are in plain view, so its gaps deserve more patience. */
static double miss_scale(const CoreObject *self, const Track *t)
{
    if (!(self->p.miss_rate_ref > 0) || t->rate < 0) return 1.0;
    const MissRate *r = &self->rates[t->rate];
    double n = r->hits + r->misses;
    if (n < MISS_MIN_EVIDENCE) return 1.0;
    double s = r->misses / n / self->p.miss_rate_ref;
    return s <= 1.0 ? 1.0 : (s < MISS_SCALE_MAX ? s : MISS_SCALE_MAX);
}

/* Has lost track t been lost too long to be re-matched? It is kept max_shadow_age frames (the
 * seconds the object may take to come back) and at least shadow_min_frames x s (the detector
 * attempts a re-detection may take). */
static double shadow_frames(const CoreObject *self, const Track *t)
{
    double attempts = (double)self->p.shadow_min_frames * miss_scale(self, t);
    return dmax((double)self->p.max_shadow_age, attempts);
}

static int shadow_expired(const CoreObject *self, const Track *t)
{
    return (double)t->fsu > shadow_frames(self, t);
}

static void track_observe(CoreObject *self, Track *t, const double *det)
{
    double z[4];
    box_to_z(det, z);
    kf_update(&t->kf, z, &self->p.kfp);
    track_remember(self, t, det);
    if (t->id != 0) count_match(self, t);
    t->fsu = 0;
    t->misses = 0;
    t->last_call = 0;
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
        t->seen = t->looked = t->mixed = 0;
        track_refresh_box(t);
    }
}

static void compact(CoreObject *self)
{
    Py_ssize_t w = 0;
    for (Py_ssize_t i = 0; i < self->ntracks; i++) {
        if (self->tracks[i].state == ST_DEAD) {
            if (self->tracks[i].flt >= 0) self->flt_used[self->tracks[i].flt] = 0;
            continue;
        }
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
        double s = self->dscore[j];
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
        t->cand = 0; /* found again: a tentative track like any other */
        if (t->state == ST_LOST) track_confirm(self, t);
        else if (t->state == ST_TENTATIVE && t->hits >= self->p.probation_age)
            track_confirm(self, t);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Visual tracking (update with a frame): a correlation filter per confirmed track, dcf.c      */

/* The FFT tables and filter slots for `need` tracks (at most MAX_VISUAL), reserved before any
 * state changes; -1 with MemoryError. */
static int reserve_visual(CoreObject *self, size_t need)
{
    if (!self->plan) {
        DcfPlan *plan = malloc(sizeof(DcfPlan));
        DcfWork *work = malloc(sizeof(DcfWork));
        if (!plan || !work) {
            free(plan);
            free(work);
            PyErr_NoMemory();
            return -1;
        }
        dcf_plan_init(plan);
        self->plan = plan;
        self->work = work;
    }
    if (need > MAX_VISUAL) need = MAX_VISUAL;
    size_t old = self->cap_flt_used;
    if (ENSURE(self, flt, need) < 0 || ENSURE(self, flt_used, need) < 0) return -1;
    if (self->cap_flt_used > old) memset(self->flt_used + old, 0, self->cap_flt_used - old);
    return 0;
}

/* A free filter slot, or -1 when all MAX_VISUAL are taken (the track then goes without). */
static int take_slot(CoreObject *self)
{
    size_t n = self->cap_flt < self->cap_flt_used ? self->cap_flt : self->cap_flt_used;
    if (n > MAX_VISUAL) n = MAX_VISUAL;
    for (size_t k = 0; k < n; k++)
        if (!self->flt_used[k]) {
            self->flt_used[k] = 1;
            return (int)k;
        }
    return -1;
}

static void free_slots(CoreObject *self)
{
    if (self->flt_used) memset(self->flt_used, 0, self->cap_flt_used);
}

/* The window around the centre (cx, cy) of box b, sampled into self->work; 0 or -1. */
static int sample_at(CoreObject *self, const DcfImage *img, const double *b, double cx, double cy)
{
    return dcf_sample(self->plan, img, cx, cy, DCF_WINDOW * (b[2] - b[0]),
                      DCF_WINDOW * (b[3] - b[1]), self->work);
}

/* Does the box where track t's filter found it (t->vis) look more like another confirmed track
 * whose box it overlaps than like t itself (colour histograms, Bhattacharyya coefficient)? Then
 * the filter has slid onto a neighbour: in a group of walkers the grey patches of two people
 * are alike, their clothes less so. */
static int looks_like_another(CoreObject *self, const DcfImage *img, const Track *t)
{
    const double *b = t->box;
    double hw = 0.5 * (b[2] - b[0]), hh = 0.5 * (b[3] - b[1]);
    double fb[4] = {t->vis[0] - hw, t->vis[1] - hh, t->vis[0] + hw, t->vis[1] + hh};
    float h[DCF_COL_BINS];
    if (dcf_colour(img, fb, h) < 0) return 0;
    double own = dcf_bhattacharyya(self->flt[t->flt].col, h);
    for (Py_ssize_t o = 0; o < self->ntracks; o++) {
        const Track *u = &self->tracks[o];
        if (u == t || u->flt < 0 || u->state == ST_DEAD || u->state == ST_TENTATIVE ||
            (u->state == ST_LOST && shadow_expired(self, u)) || u->cls != t->cls ||
            !(box_iou(u->box, fb) > 0))
            continue;
        if (dcf_bhattacharyya(self->flt[u->flt].col, h) > own) return 1;
    }
    return 0;
}

/* Each track with a filter looks for its patch around its predicted box; where the peak stands
 * out of its sidelobes (PSR), the track is `seen` there (t->vis). Lost tracks look only on
 * frames without detections (`lost_too`): where there are detections, theirs is the word on
 * whether a track is still there; a shadow whose time is up does not look (it waits for the
 * detector's next attempt, which drops it unless it re-matches it). */
static void visual_look(CoreObject *self, const DcfImage *img, int lost_too)
{
    for (Py_ssize_t i = 0; i < self->ntracks; i++) {
        Track *t = &self->tracks[i];
        if (t->flt < 0 || t->state == ST_DEAD ||
            (t->state == ST_LOST && (!lost_too || shadow_expired(self, t))))
            continue;
        t->looked = 1;
        const double *b = t->box;
        double cx = 0.5 * (b[0] + b[2]), cy = 0.5 * (b[1] + b[3]);
        if (sample_at(self, img, b, cx, cy) < 0) continue;
        double dx, dy, peak;
        double psr = dcf_locate(self->plan, &self->flt[t->flt], self->work, &dx, &dy, &peak);
        if (!(psr >= DCF_PSR_MIN)) continue;
        double cw = DCF_WINDOW * (b[2] - b[0]) / DCF_N, ch = DCF_WINDOW * (b[3] - b[1]) / DCF_N;
        t->vis[0] = cx + dx * cw;
        t->vis[1] = cy + dy * ch;
        t->seen = 1;
        /* Between detections the filter alone moves the track: not onto someone else. A
         * tentative track's colour is one detection's box, not yet a model of its object. */
        if (lost_too && t->state != ST_TENTATIVE && looks_like_another(self, img, t)) {
            t->seen = 0;
            t->mixed = 1;
        }
    }
}

/* A seen track that no detection matched this frame takes the centre the filter found as a
 * measurement of its position (detections, where there are, take precedence). */
static void visual_move(CoreObject *self, const unsigned char *tmatched)
{
    for (Py_ssize_t i = 0; i < self->ntracks; i++) {
        Track *t = &self->tracks[i];
        if (!t->seen || (tmatched && tmatched[i])) continue;
        kf_update_centre(&t->kf, t->vis[0], t->vis[1], &self->p.kfp);
        track_refresh_box(t);
    }
}

/* A track's colour learns from its matched detection's box only (at MOSSE's rate): where the
 * filter found it, the box is the Kalman size at the filter's centre, a looser fit. */
static void learn_colour(CoreObject *self, const DcfImage *img, Track *t)
{
    float h[DCF_COL_BINS];
    if (dcf_colour(img, t->obs, h) < 0) return;
    float *m = self->flt[t->flt].col;
    for (int k = 0; k < DCF_COL_BINS; k++) m[k] = (1.0f - DCF_RATE) * m[k] + DCF_RATE * h[k];
}

/* Each confirmed track's filter learns its patch: where a detection matched it this frame (a
 * new filter for a track that has none), else where the filter itself found it. An unseen
 * track's filter is left alone: it must not learn its occluder. */
static void visual_learn(CoreObject *self, const DcfImage *img)
{
    for (Py_ssize_t i = 0; i < self->ntracks; i++) {
        Track *t = &self->tracks[i];
        if (t->state == ST_DEAD) continue;
        const double *b = t->fsu == 0 ? t->obs : (t->seen ? t->box : NULL);
        if (!b || (t->flt < 0 && t->fsu != 0)) continue;
        double cx = 0.5 * (b[0] + b[2]), cy = 0.5 * (b[1] + b[3]);
        /* Where the filter itself found it, not the Kalman box (which blends in the prediction):
         * trained at a lagging centre, the filter learns the lag, and the next frame lags more
         * (measured: boxes fell behind the walking direction from frame to frame). */
        if (t->fsu != 0) {
            cx = t->vis[0];
            cy = t->vis[1];
        }
        if (t->flt >= 0) {
            if (sample_at(self, img, b, cx, cy) == 0)
                dcf_train(self->plan, &self->flt[t->flt], self->work, DCF_RATE);
            if (t->fsu == 0) learn_colour(self, img, t);
            continue;
        }
        if ((t->flt = take_slot(self)) < 0) continue;
        /* A new filter learns the patch and the patch stretched by +-10 % in each direction
         * (MOSSE starts from perturbed copies of the first frame, so that the filter does not
         * fit one exact look): the mean of the nine. A candidate's starts from its patch alone:
         * it has to last until the next detection attempt only, and at detect_every 1 every
         * candidate ends on the next frame (nine samples for each would cost more than all the
         * tracks' looks together in a frame with many detections under new_track_thresh). */
        int k = 0, d = t->cand ? 0 : 1;
        for (int sy = -d; sy <= d; sy++)
            for (int sx = -d; sx <= d; sx++) {
                double w = (b[2] - b[0]) * (1.0 + 0.1 * sx), h = (b[3] - b[1]) * (1.0 + 0.1 * sy);
                double box[4] = {cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h};
                if (sample_at(self, img, box, cx, cy) < 0) continue;
                dcf_train(self->plan, &self->flt[t->flt], self->work, 1.0f / (float)++k);
            }
        if (k == 0 || dcf_colour(img, b, self->flt[t->flt].col) < 0) {
            self->flt_used[t->flt] = 0;
            t->flt = -1;
        }
    }
}

/* Is track t reported this frame although lost? Only until the detector missed it on
 * coast_frames x s^3 frames with detections (s = miss_scale: a detector that misses people in
 * view; frames without detections are no attempt), not once the detector missed it and its
 * filter looked and found nothing in the picture (finding a patch that looks like an
 * overlapping track is not nothing; a track that its filter lost between detections is reported
 * at its prediction until the detector's next attempt decides), and only while its predicted
 * box lies
 * wholly inside the image (when the image size is known: a track leaving the picture is gone,
 * not missed) and, once an attempt missed it, overlaps no active track's box by
 * coast_overlap x s^3 IoU or more (there the detection most likely went to that track: the
 * person is occluded or the lost track was a duplicate). */
static int track_coasts(const CoreObject *self, const Track *t)
{
    const Params *p = &self->p;
    if (t->state != ST_LOST || shadow_expired(self, t)) return 0;
    double s = miss_scale(self, t), s3 = s * s * s;
    double overlap = dmin(p->coast_overlap * s3, 1.0);
    if ((double)t->misses > (double)p->coast_frames * s3) return 0;
    const double *b = t->box;
    double fw = p->frame_width > 0 ? p->frame_width : self->img_w;
    double fh = p->frame_height > 0 ? p->frame_height : self->img_h;
    if (fw > 0 && fh > 0 && !(b[0] >= 0 && b[1] >= 0 && b[2] <= fw && b[3] <= fh)) return 0;
    /* Lost by its filter between detections: no attempt has missed it yet, so no detection
     * went to a neighbour either; the detector's next attempt decides. */
    if (t->misses == 0) return 1;
    /* the picture, when there is one, still shows it (or an overlapping track where it was:
     * likely in front of it) */
    if (t->looked && !t->seen && !t->mixed) return 0;
    if (overlap < 1.0) {
        for (Py_ssize_t i = 0; i < self->ntracks; i++) {
            const Track *a = &self->tracks[i];
            if (a->state == ST_ACTIVE && a->cls == t->cls && box_iou(a->box, b) >= overlap)
                return 0;
        }
    }
    return 1;
}

static void mark_coasting(CoreObject *self)
{
    int on = self->p.coast_frames > 0;
    for (Py_ssize_t i = 0; i < self->ntracks; i++) {
        Track *t = &self->tracks[i];
        t->coasted = on && track_coasts(self, t);
    }
}

/* Rows of the tracks in `want_state`: ST_ACTIVE reports the coasted lost tracks too, and
 * ST_LOST leaves them out (each track is in one of the two lists). */
static int track_listed(const Track *t, int want_state)
{
    if (want_state == ST_ACTIVE) return t->state == ST_ACTIVE || t->coasted;
    if (want_state == ST_LOST) return t->state == ST_LOST && !t->coasted;
    return t->state == want_state;
}

static PyObject *write_rows(CoreObject *self, int want_state)
{
    Py_ssize_t m = 0;
    for (Py_ssize_t i = 0; i < self->ntracks; i++) m += track_listed(&self->tracks[i], want_state);
    PyObject *out = PyByteArray_FromStringAndSize(NULL, m * OUT_COLS * (Py_ssize_t)sizeof(double));
    if (!out) return NULL;
    double *o = (double *)PyByteArray_AS_STRING(out);
    for (Py_ssize_t i = 0; i < self->ntracks; i++) {
        const Track *t = &self->tracks[i];
        if (!track_listed(t, want_state)) continue;
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

/* The frame (H, W, 3) uint8 BGR, any strides, as an image; 0, or -1 with ValueError. Nothing
 * is changed: the caller commits the size once the whole update is valid. */
static int read_frame(const CoreObject *self, PyObject *obj, Py_buffer *view, DcfImage *img)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_RECORDS_RO) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError,
                     "frame must be a uint8 array (H, W, 3), BGR, or None; got %.100s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    const char *fmt = item_format(view);
    if (strcmp(fmt, "B") != 0) {
        PyErr_Format(PyExc_ValueError, "frame must be uint8, got buffer format '%.20s'",
                     view->format ? view->format : "B");
    } else if (view->ndim != 3 || view->shape[2] != 3) {
        PyErr_Format(PyExc_ValueError, "frame must have shape (H, W, 3) (BGR), got %d "
                     "dimension(s)%s", view->ndim,
                     view->ndim == 3 ? " with a last axis other than 3" : "");
    } else if (view->shape[0] < 1 || view->shape[1] < 1 || view->shape[0] > 65535 ||
               view->shape[1] > 65535) {
        PyErr_Format(PyExc_ValueError, "frame size %zd x %zd is outside 1..65535",
                     view->shape[1], view->shape[0]);
    } else if (self->img_w && (view->shape[1] != self->img_w || view->shape[0] != self->img_h)) {
        PyErr_Format(PyExc_ValueError, "frame size changed from %d x %d to %zd x %zd within a "
                     "stream (reset() the tracker first)", self->img_w, self->img_h,
                     view->shape[1], view->shape[0]);
    } else {
        img->data = (const unsigned char *)view->buf;
        img->sy = view->strides[0];
        img->sx = view->strides[1];
        img->sc = view->strides[2];
        img->h = (int)view->shape[0];
        img->w = (int)view->shape[1];
        return 0;
    }
    PyBuffer_Release(view);
    return -1;
}

static PyObject *step(CoreObject *self, PyObject *arg, const DcfImage *img)
{
    const Params *p = &self->p;
    if (arg == Py_None) {
        /* No detection: predict (and, with a frame, follow what the filters see); no lifecycle
         * transitions except a track the filter lost. A shadow whose time runs out here is
         * dropped on the next frame with detections, before the association (so it is
         * re-matched exactly as if dropped here): lifecycle ends fall on the detector's
         * frames, and a shadow is not taken out of the lost list N - 1 frames before the
         * frame that would have decided it at detect_every 1. Until then it waits where it is
         * (it neither looks, nor coasts, nor counts as a neighbour in the colour check). */
        if (img && reserve_visual(self, 0) < 0) return NULL;
        self->frame_count++;
        predict_all(self);
        if (img) {
            self->img_w = img->w;
            self->img_h = img->h;
            visual_look(self, img, 1);
            visual_move(self, NULL);
        }
        for (Py_ssize_t i = 0; i < self->ntracks; i++) {
            Track *t = &self->tracks[i];
            if (img && t->state == ST_ACTIVE && t->flt >= 0 && !t->seen) t->state = ST_LOST;
            /* A tentative track that its filter follows gathers a hit per frame, as it would
             * from a detection per frame at detect_every 1: confirmed after probation_age
             * frames, not probation_age detection attempts. A candidate waits for the
             * detector's word (below). */
            if (t->state == ST_TENTATIVE && t->seen) {
                t->hits++;
                t->followed = 1;
                if (!t->cand && t->hits >= p->probation_age) track_confirm(self, t);
            }
            /* With the picture, a shadow whose last re-matchable frame is this one, without
             * detections, is kept for the detector's next attempt (at detect_every 1 this frame
             * would have been one): its time is counted to a detection attempt. */
            if (img && t->state == ST_LOST && !shadow_expired(self, t) &&
                (double)(t->fsu + 1) > shadow_frames(self, t))
                t->last_call = 1;
            if (t->state == ST_LOST && shadow_expired(self, t) && !t->last_call) t->expired = 1;
        }
        if (img) visual_learn(self, img);
        compact(self);
        mark_coasting(self);
        return write_rows(self, ST_ACTIVE);
    }
    /* Validate and reserve everything first: an error leaves the tracker untouched. */
    Py_ssize_t n = read_dets(self, arg);
    if (n < 0) return NULL;
    if (img && reserve_visual(self, (size_t)self->ntracks + (size_t)n) < 0) return NULL;
    unsigned char *tmatched = self->tmatched;
    memset(tmatched, 0, (size_t)self->ntracks + 1);

    self->frame_count++;
    predict_all(self);
    if (img) {
        self->img_w = img->w;
        self->img_h = img->h;
        visual_look(self, img, 0);
    }
    /* A candidate that no frame without detections followed (detect_every 1) ends here, before
     * it could take a detection: with a detection on every frame, births are the threshold's.
     * So does a shadow whose time ran out on a frame without detections (above). */
    for (Py_ssize_t i = 0; i < self->ntracks; i++) {
        Track *t = &self->tracks[i];
        if ((t->cand && !t->followed) || t->expired) t->state = ST_DEAD;
    }
    score_dets(self, n);
    sort_frame_dets(self, n);
    for (Py_ssize_t j = 0; j < n; j++) self->dmatch[j] = -1;

    /* 1: high-score detections vs active and lost tracks (predicted boxes). */
    stage(self, n, ST_ACTIVE, ST_LOST, p->high_thresh, HUGE_VAL, 0, p->fuse_score,
          p->match_thresh, p->iou_buffer, p->direction_weight, tmatched);
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

    if (img) visual_move(self, tmatched);
    /* Unmatched tracks: tentative -> early termination; active -> lost; lost -> expire. */
    Py_ssize_t nold = self->ntracks;
    for (Py_ssize_t i = 0; i < nold; i++) {
        Track *t = &self->tracks[i];
        if (tmatched[i]) continue;
        t->misses++;
        if (t->state == ST_TENTATIVE) {
            t->state = ST_DEAD; /* early termination: a tentative track lives on hits only */
        } else if (t->state == ST_ACTIVE) {
            t->state = ST_LOST; /* reported for coast_frames more if it coasts (below) */
        }
        if (t->state == ST_LOST && shadow_expired(self, t)) t->state = ST_DEAD;
    }

    /* New tentative tracks from unmatched confident detections. */
    for (Py_ssize_t j = 0; j < n; j++) {
        const double *det = self->dets + (size_t)j * DET_COLS;
        double ascore = self->dscore[j];
        /* With the picture, an unmatched high detection under new_track_thresh starts a
         * candidate: its filter follows it through the frames without detections, and the
         * detector's next attempt must find it again (a tentative match) before it counts as a
         * track. At detect_every 1 a person whose score hovers at the threshold gets an attempt
         * per frame and soon one above it; at N the attempts are N times rarer, and the frames
         * between (the filter kept finding it) plus the re-detection stand for the ones missing.
         * Without frames between, the candidate ends unmatched (above). */
        int cand = img && ascore < p->new_track_thresh;
        if (self->dmatch[j] >= 0 || ascore < p->high_thresh ||
            (!img && ascore < p->new_track_thresh))
            continue;
        if (!(det[2] > det[0] && det[3] > det[1])) continue;
        assert(self->ntracks < (Py_ssize_t)self->cap_tracks);
        Track *t = &self->tracks[self->ntracks++];
        memset(t, 0, sizeof(*t));
        t->flt = -1;
        double z[4];
        box_to_z(det, z);
        kf_initiate(&t->kf, z, &p->kfp);
        track_remember(self, t, det);
        t->cls = det[5];
        t->rate = find_rate(self, t->cls);
        t->hits = 1;
        t->state = ST_TENTATIVE;
        t->cand = cand;
        if (!cand && (p->probation_age <= 1 || self->frame_count == 1)) track_confirm(self, t);
    }
    if (img) visual_learn(self, img);
    compact(self);
    mark_coasting(self);
    return write_rows(self, ST_ACTIVE);
}

static PyObject *Core_update(CoreObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"dets", "frame", NULL};
    PyObject *dets = NULL, *frame = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:update", kwlist, &dets, &frame))
        return NULL;
    if (frame == Py_None) return step(self, dets, NULL);
    Py_buffer view;
    DcfImage img;
    if (read_frame(self, frame, &view, &img) < 0) return NULL;
    PyObject *res = step(self, dets, &img);
    PyBuffer_Release(&view);
    return res;
}

static PyObject *Core_lost(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    return write_rows(self, ST_LOST);
}

static void free_windows(CoreObject *self);

static PyObject *Core_reset(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    self->ntracks = 0;
    self->frame_count = 0; /* next_id is kept: IDs are never reused in a tracker's life */
    free_windows(self);    /* a new scene: its scores are learnt afresh */
    self->nrates = 0;      /* and its miss rates */
    free_slots(self);
    self->img_w = self->img_h = 0; /* a new stream may have another size */
    Py_RETURN_NONE;
}

/* forget_looks(): every track's filter dropped and the frame size forgotten, tracks kept (the
 * stream changed resolution: the filters were learnt at the old one). */
static PyObject *Core_forget_looks(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    for (Py_ssize_t i = 0; i < self->ntracks; i++) self->tracks[i].flt = -1;
    free_slots(self);
    self->img_w = self->img_h = 0;
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

/* Parse and check keyword-only parameters into *p; 0, or -1 with an exception set. */
static int parse_params(PyObject *args, PyObject *kwds, Params *p)
{
#define PARAM_KW(type, name, fmt, lo, hi) #name,
#define PARAM_FMT(type, name, fmt, lo, hi) fmt
#define PARAM_PTR(type, name, fmt, lo, hi) , &p->name
    static char *kwlist[] = {PARAM_TABLE(PARAM_KW) NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "$" PARAM_TABLE(PARAM_FMT), kwlist
                                     PARAM_TABLE(PARAM_PTR)))
        return -1;
    /* (NaN fails both comparisons) */
#define PARAM_CHECK(type, name, fmt, lo, hi)                                               \
    if (!((double)p->name >= (lo) && (double)p->name <= (hi))) {                           \
        PyErr_SetString(PyExc_ValueError, "tracker parameter " #name " out of range");     \
        return -1;                                                                         \
    }
    PARAM_TABLE(PARAM_CHECK)
    p->kfp.w_pos = p->std_weight_position;
    p->kfp.w_meas = p->std_weight_measurement;
    p->kfp.w_vel = p->std_weight_velocity;
    return 0;
}

static void free_windows(CoreObject *self)
{
    for (int k = 0; k < self->nwins; k++) score_window_free(&self->wins[k]);
    self->nwins = 0;
}

static int Core_init(CoreObject *self, PyObject *args, PyObject *kwds)
{
    Params p;
    if (parse_params(args, kwds, &p) < 0) return -1;
    free_windows(self);
    self->p = p;
    self->ntracks = 0;
    self->nrates = 0;
    self->frame_count = 0;
    free_slots(self);
    self->img_w = self->img_h = 0;
    if (self->next_id < 1) self->next_id = 1;
    return 0;
}

/* configure(**params): new parameters, tracks kept (e.g. the camera's frame rate became
 * known). A new score_window size or mode restarts the score windows. */
static PyObject *Core_configure(CoreObject *self, PyObject *args, PyObject *kwds)
{
    Params p;
    if (parse_params(args, kwds, &p) < 0) return NULL;
    if (p.score_window != self->p.score_window || p.adaptive != self->p.adaptive)
        free_windows(self);
    self->p = p;
    Py_RETURN_NONE;
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
    free(self->xkeys);
    free(self->dpos);
    free(self->lapcost);
    free(self->lapi);
    free(self->lapd);
    free(self->dscore);
    free(self->dwin);
    free_windows(self);
    free(self->wins);
    free(self->plan);
    free(self->work);
    free(self->flt);
    free(self->flt_used);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Core_methods[] = {
    {"update", (PyCFunction)(void (*)(void))Core_update, METH_VARARGS | METH_KEYWORDS,
     "update(dets or None, frame=None) -> bytearray of float64 rows (8 columns), active "
     "tracks; frame: (H, W, 3) uint8 BGR for visual tracking"},
    {"lost", (PyCFunction)Core_lost, METH_NOARGS, "lost() -> bytearray of shadow-track rows"},
    {"reset", (PyCFunction)Core_reset, METH_NOARGS, "drop all tracks; IDs are not reused"},
    {"forget_looks", (PyCFunction)Core_forget_looks, METH_NOARGS,
     "drop the tracks' visual models and the frame size; tracks kept"},
    {"configure", (PyCFunction)(void (*)(void))Core_configure, METH_VARARGS | METH_KEYWORDS,
     "configure(**params): replace the parameters, keep the tracks"},
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

/* Multi-phase init (PEP 489): the module object is made by the import system, this fills it. */
static int tracker_exec(PyObject *m)
{
    if (PyType_Ready(&CoreType) < 0) return -1;
    Py_INCREF(&CoreType);
    /* PyModule_AddObject steals the reference only on success. */
    if (PyModule_AddObject(m, "Core", (PyObject *)&CoreType) < 0) {
        Py_DECREF(&CoreType);
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot tracker_slots[] = {
    {Py_mod_exec, (void *)tracker_exec},
    {0, NULL},
};

static struct PyModuleDef tracker_module = {
    PyModuleDef_HEAD_INIT, "_tracker", "IOU/Kalman multi-object tracker core (C99).", 0,
    module_methods, tracker_slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__tracker(void) { return PyModuleDef_Init(&tracker_module); }
