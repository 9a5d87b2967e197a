/*
 * The tracker's math without Python: Kalman steps, LAPJV and the running score window.
 * See trackmath.h for the contracts.
 */
#include "trackmath.h"

#include <stdlib.h>
#include <string.h>

void kf_initiate(KF *kf, const double z[4], const KFParams *kp)
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

void kf_predict(KF *kf, const KFParams *kp)
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

static void kf_update_coords(KF *kf, const double *z, int ncoords, const KFParams *kp)
{
    double h = kf->m[3];
    double sr[4] = {kp->w_meas * h, kp->w_meas * h, 1e-1, kp->w_meas * h};
    for (int k = 0; k < ncoords; k++) {
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

void kf_update(KF *kf, const double z[4], const KFParams *kp) { kf_update_coords(kf, z, 4, kp); }

void kf_update_centre(KF *kf, double cx, double cy, const KFParams *kp)
{
    double z[2] = {cx, cy};
    kf_update_coords(kf, z, 2, kp);
}

/* ------------------------------------------------------------------------------------------ */
/* LAPJV: Jonker & Volgenant (1987), dense square version. Minimises sum cost[i][rowsol[i]].   */

void lapjv(int dim, const double *cost, LapWork *w)
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
/* Running score window                                                                        */

int score_window_init(ScoreWindow *w, double cls, int cap)
{
    memset(w, 0, sizeof(*w));
    w->cls = cls;
    w->ring = malloc(sizeof(double) * (size_t)cap);
    w->sorted = malloc(sizeof(double) * (size_t)cap);
    if (!w->ring || !w->sorted) {
        score_window_free(w);
        return -1;
    }
    w->cap = cap;
    return 0;
}

void score_window_free(ScoreWindow *w)
{
    free(w->ring);
    free(w->sorted);
    w->ring = w->sorted = NULL;
    w->cap = w->n = w->pos = w->fresh = w->ready = 0;
}

void score_window_push(ScoreWindow *w, double score)
{
    if (w->cap <= 0) return;
    w->ring[w->pos] = score;
    w->pos = (w->pos + 1) % w->cap;
    if (w->n < w->cap) w->n++;
    w->fresh++;
}

/* The k-th smallest of a[0..n) (0-based), with a[0..k) <= a[k] <= a[k+1..n) afterwards:
 * quickselect with a median-of-three pivot, expected O(n) (a full sort was 30% of update()). */
static double select_kth(double *a, int n, int k)
{
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        double x = a[lo], y = a[lo + (hi - lo) / 2], z = a[hi];
        double pivot = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
        int i = lo, j = hi;
        while (i <= j) {
            while (a[i] < pivot) i++;
            while (a[j] > pivot) j--;
            if (i <= j) {
                double t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        if (k <= j) hi = j;
        else if (k >= i) lo = i;
        else break; /* a[j+1..i-1] all equal the pivot, k among them */
    }
    return a[k];
}

void score_window_refresh(ScoreWindow *w)
{
    if (w->fresh == 0 || (w->ready && 4 * w->fresh < w->n)) return;
    int k_lo = (int)(SCORE_Q_LO * (w->n - 1)), k_hi = (int)(SCORE_Q_HI * (w->n - 1));
    memcpy(w->sorted, w->ring, sizeof(double) * (size_t)w->n);
    w->hi = select_kth(w->sorted, w->n, k_hi);
    w->lo = select_kth(w->sorted, k_hi + 1, k_lo); /* the k_lo smallest are left of k_hi */
    w->ready = 1;
    w->fresh = 0;
}

double score_window_normalise(const ScoreWindow *w, double score)
{
    if (!w->ready || !(w->hi > w->lo)) return 1.0;
    double u = (score - w->lo) / (w->hi - w->lo);
    return u < 0 ? 0.0 : (u > 1 ? 1.0 : u);
}
