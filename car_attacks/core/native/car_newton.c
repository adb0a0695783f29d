/* The fused Newton solve of clipping-aware rescaling (p = 1 or 2) for the CPU: one sample
 * at a time, for car_attacks.core.native_newton (the maths and the contract are there).
 *
 * Per row: the pass at t = 0 (S(0) and the largest value of g in double, of the unscaled
 * powers; max |delta|), the start, the powers dp = (|delta| / d_scale)^p and rp = r^p
 * written to a buffer of two rows, then t <- t + (E - g)/S over them until S
 * repeats or the step lands before the next breakpoint of g. A CIFAR row (2 x 12 KB)
 * stays in the L1/L2 cache for all its passes, where the batched passes of the compiled
 * solve stream the whole batch each time. The same iterates as
 * car_attacks.core.fused_newton (the double sums in another order). The first pass also
 * runs the public function's checks (flags_out: bit 0, a value of x outside [below,
 * above] or not finite, delta not finite, or eps not finite and >= 0; bit 1, the float32
 * solve needs float64: a non-zero eps below tiny_eps, or a non-zero |delta_i| below
 * max |delta| * span_factor). Returns 1 where the buffer could not be allocated (the
 * caller then solves otherwise), else 0.
 *
 * IEEE arithmetic (no -ffast-math); `omp simd` reductions (-fopenmp-simd: no OpenMP
 * runtime) let the sums be vectorised, and -fno-trapping-math lets the selects run as
 * blends. Rows are independent: each call splits them into blocks run on PyTorch's own
 * OpenMP threads (with -fopenmp: the libgomp PyTorch has loaded) or else on threads of
 * its own (pthreads). The
 * code is written once per dtype T and power (SQ: p = 2) by the macros below; SQ is a
 * constant in each specialisation, so the loops have no branch.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <pthread.h>
#include <stdlib.h>

/* Rows [first, last) of one call on threads of its own: each entry point packs its
 * arguments in a struct and gives car_parallel a function solving a block of rows. Rows
 * are independent, so the result does not depend on the number of threads. */
typedef int (*car_block_fn)(const void *args, int64_t first, int64_t last);

typedef struct {
    car_block_fn fn;
    const void *args;
    int64_t first, last;
    int status;
} car_task;

static void *car_task_run(void *task) {
    car_task *t = (car_task *)task;
    t->status = t->fn(t->args, t->first, t->last);
    return NULL;
}

#define CAR_MAX_THREADS 256

/* fn on `threads` blocks of rows (the calling thread takes the first); the OR of the
 * blocks' statuses. A thread that cannot be started runs its block on the caller. */
static int car_parallel(car_block_fn fn, const void *args, int64_t n_rows, int threads) {
    if (threads > n_rows) threads = (int)n_rows;
    if (threads > CAR_MAX_THREADS) threads = CAR_MAX_THREADS;
    if (threads <= 1) return fn(args, 0, n_rows);
#ifdef _OPENMP
    /* compiled with -fopenmp: PyTorch's own OpenMP threads (the libgomp it has loaded),
     * which are still spinning after its parallel work, take the blocks */
    int status = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(| : status)
    for (int k = 0; k < threads; ++k)
        status |= fn(args, n_rows * k / threads, n_rows * (k + 1) / threads);
    return status;
#else
    car_task tasks[CAR_MAX_THREADS];
    pthread_t ids[CAR_MAX_THREADS];
    int started[CAR_MAX_THREADS];
    for (int k = 0; k < threads; ++k) {
        tasks[k].fn = fn;
        tasks[k].args = args;
        tasks[k].first = n_rows * k / threads;
        tasks[k].last = n_rows * (k + 1) / threads;
        tasks[k].status = 0;
    }
    for (int k = 1; k < threads; ++k)
        started[k] = pthread_create(&ids[k], NULL, car_task_run, &tasks[k]) == 0;
    car_task_run(&tasks[0]);
    int status = tasks[0].status;
    for (int k = 1; k < threads; ++k) {
        if (started[k])
            pthread_join(ids[k], NULL);
        else
            car_task_run(&tasks[k]);
        status |= tasks[k].status;
    }
    return status;
#endif
}

/* One element of a Newton pass over the powers written out for the row (dp, rp). */
#define CAR_PASS_ELEMENT(T)                                                                \
    T dp = dpr[i], rp = rpr[i];                                                            \
    T moved = t * dp;                                                                      \
    int active = rp - moved > 0;                                                           \
    g += (double)(moved < rp ? moved : rp);                                                \
    slope += active ? (double)dp : 0.0;

/* The kernels' flags per row (bit values; car_attacks.core.native_newton reads them). */
#define CAR_CHECK_FAILED 1 /* x outside [below, above] or not finite, delta or z or eps not */
                           /* finite, eps < 0 */
#define CAR_WIDE 2         /* the float32 solve needs float64 */
#define CAR_INSIDE 4       /* projections: clip(z) is in the ball, the projection is clip(z) */
#define CAR_LEFT 8         /* projections: not written, for the caller (see each kernel) */
#define CAR_CLOSED 16      /* Newton: eta is the closed form of the finished solve */
#define CAR_TINY_EPS 32    /* Newton, p = 2: eps^2 is not a normal number (the caller scales) */

/* The smallest eps whose square is a normal number of T (2^-63, 2^-511). */
#define CAR_SQRT_TINY(T) ((T)(sizeof(T) > 4 ? 0x1p-511 : 0x1p-63))

/* The Newton iterations t <- t + (E - g(t)) / S(t) from t = 0 over the powers of a row
 * (dpr, rpr; slope0 = S(0), target = E), until S repeats or a step lands before the next
 * breakpoint of g (sought only near the root); declares s, t, done and count. */
#define CAR_ITERATE(T)                                                                     \
    T s = (T)slope0;                                                                       \
    T step = target / (s > 0 ? s : (T)1);                                                  \
    step = step > 0 ? step : (T)0;                                                         \
    T t = step, previous = s;                                                              \
    int near = step <= next_step * step;                                                   \
    int done = 0, count = 1;                                                               \
    while (!done && count < max_iter) {                                                    \
        double g = 0.0, slope = 0.0;                                                       \
        T nearest = (T)INFINITY;                                                           \
        if (near) { /* the next breakpoint matters only near the root */                   \
            _Pragma("omp simd reduction(+ : g, slope) reduction(min : nearest)")           \
            for (int64_t i = 0; i < n_cols; ++i) {                                         \
                CAR_PASS_ELEMENT(T)                                                        \
                T ratio = rp / dp; /* every lane, then a blend */                          \
                ratio = active ? ratio : (T)INFINITY;                                      \
                nearest = ratio < nearest ? ratio : nearest;                               \
            }                                                                              \
        } else {                                                                           \
            _Pragma("omp simd reduction(+ : g, slope)")                                    \
            for (int64_t i = 0; i < n_cols; ++i) {                                         \
                CAR_PASS_ELEMENT(T)                                                        \
            }                                                                              \
        }                                                                                  \
        T gt = (T)g, st = (T)slope;                                                        \
        count += 1;                                                                        \
        s = st;                                                                            \
        int repeated = st == previous;                                                     \
        step = (target - gt) / (st > 0 ? st : (T)1);                                       \
        step = step > 0 ? step : (T)0;                                                     \
        T next = repeated ? t : t + step;                                                  \
        int landed = near && next <= nearest; /* before the next breakpoint */             \
        done = repeated || landed;                                                         \
        near = near || step <= next_step * next;                                           \
        t = next;                                                                          \
        previous = st;                                                                     \
    }

/* What the Newton solve of one row found (see car_newton_row below). */
#define CAR_ROW_RESULT(T)                                                                  \
    typedef struct {                                                                       \
        T t, s, target, d_scale, eta;                                                      \
        int reachable, count, done, flags;                                                 \
    } car_row_##T;

CAR_ROW_RESULT(float)
CAR_ROW_RESULT(double)

/* The Newton solve of one row (x, d) of n_cols values with target eps: the pass at
 * t = 0 with the checks (flags bit 0: a check failed, bit 1: needs float64), the powers
 * written to dpr and rpr (n_cols each), then the iterations over them. */
#define CAR_NEWTON_ROW(T, SQ, NAME)                                                        \
    static inline car_row_##T NAME(const T *xr, const T *dr, T eps, int64_t n_cols, T lo,  \
                                   T hi, T next_step, int max_iter, T below, T above,      \
                                   T span_factor, T tiny_eps, T *dpr, T *rpr) {            \
        double slope0 = 0.0, reach = 0.0;                                                  \
        T largest = 0, smallest = (T)INFINITY;                                             \
        int bad = 0;                                                                       \
        _Pragma("omp simd reduction(+ : slope0, reach, bad) reduction(max : largest) reduction(min : smallest)") \
        for (int64_t i = 0; i < n_cols; ++i) {                                             \
            T a = dr[i] < 0 ? -dr[i] : dr[i];                                              \
            /* the checks: x finite in [below, above], delta finite */                     \
            bad += !(xr[i] >= below && xr[i] <= above) || !(dr[i] - dr[i] == 0);           \
            smallest = a > 0 && a < smallest ? a : smallest;                               \
            T room = dr[i] >= 0 ? hi - xr[i] : xr[i] - lo;                                 \
            room = room > 0 ? room : (T)0;                                                 \
            room = a > 0 ? room : (T)0;                                                    \
            double a64 = a, r64 = room;                                                    \
            double dp = (SQ) ? a64 * a64 : a64;                                            \
            double rp = (SQ) ? r64 * r64 : r64;                                            \
            slope0 += rp > 0 ? dp : 0.0;                                                   \
            reach += rp;                                                                   \
            largest = a > largest ? a : largest;                                           \
        }                                                                                  \
        /* eps: the row's target */                                                        \
        bad += !(eps >= 0 && eps - eps == 0); /* eps finite and >= 0 */                    \
        int wide = (eps > 0 && eps < tiny_eps) || smallest < largest * span_factor;        \
        int tiny = (SQ) && eps > 0 && eps < CAR_SQRT_TINY(T);                              \
        int flags = (bad > 0 ? CAR_CHECK_FAILED : 0) | (wide ? CAR_WIDE : 0);              \
        flags |= tiny ? CAR_TINY_EPS : 0;                                                  \
        T d_scale = 1;                                                                     \
        int reachable;                                                                     \
        T target;                                                                          \
        if (SQ) {                                                                          \
            d_scale = largest > 0 ? largest : (T)1;                                        \
            double ds = d_scale;                                                           \
            slope0 = slope0 / (ds * ds);                                                   \
            reachable = eps * eps <= (T)reach;                                             \
            T e = reachable ? eps : (T)0;                                                  \
            target = e * e;                                                                \
        } else {                                                                           \
            reachable = eps <= (T)reach;                                                   \
            target = reachable ? eps : (T)0;                                               \
        }                                                                                  \
        _Pragma("omp simd")                                                                \
        for (int64_t i = 0; i < n_cols; ++i) {                                             \
            T a = dr[i] < 0 ? -dr[i] : dr[i];                                              \
            T dp = a;                                                                      \
            if (SQ) {                                                                      \
                T q = a / d_scale;                                                         \
                dp = q * q;                                                                \
            }                                                                              \
            T room = dr[i] >= 0 ? hi - xr[i] : xr[i] - lo;                                 \
            room = room > 0 ? room : (T)0;                                                 \
            dpr[i] = dp;                                                                   \
            rpr[i] = dp > 0 ? ((SQ) ? room * room : room) : (T)0;                          \
        }                                                                                  \
        CAR_ITERATE(T)                                                                     \
        /* the closed form eta = t^(1/p) / d_scale (solvers._eta_from_t) where it applies: \
         * finished, reachable, a slope on the final segment, t finite, eps^2 normal */    \
        int stuck = s <= 0 && target > 0;                                                  \
        T eta = 0;                                                                         \
        if (done && reachable && !stuck && !tiny && t < (T)INFINITY) {                     \
            T root = t > 0 ? ((SQ) ? (T)sqrt((double)t) : t) : (T)0;                       \
            eta = root / d_scale;                                                          \
            flags |= CAR_CLOSED;                                                           \
        }                                                                                  \
        car_row_##T result = {t, s, target, d_scale, eta, reachable, count, done, flags};  \
        return result;                                                                     \
    }

CAR_NEWTON_ROW(float, 0, newton_row_f32_p1)
CAR_NEWTON_ROW(float, 1, newton_row_f32_p2)
CAR_NEWTON_ROW(double, 0, newton_row_f64_p1)
CAR_NEWTON_ROW(double, 1, newton_row_f64_p2)

/* The rows of one block: each solved alone, its powers in a buffer of two rows. */
#define CAR_NEWTON_ROWS(T, ROW, NAME)                                                      \
    static int NAME(const T *x, const T *d, const T *eps_in, int64_t n_rows,               \
                     int64_t n_cols, T lo, T hi, T next_step, int max_iter, T below,       \
                     T above, T span_factor, T tiny_eps, T *t_out, T *s_out,               \
                     T *target_out, int8_t *reach_out, T *scale_out, int32_t *count_out,   \
                     int8_t *done_out, T *eta_out, int8_t *flags_out) {                    \
        /* the row's powers, written once after the first pass (in the cache) */           \
        T *dpr = (T *)malloc(2 * (size_t)n_cols * sizeof(T));                              \
        if (dpr == NULL) return 1;                                                         \
        T *rpr = dpr + n_cols;                                                             \
        for (int64_t r = 0; r < n_rows; ++r) {                                             \
            car_row_##T row = ROW(x + r * n_cols, d + r * n_cols, eps_in[r], n_cols, lo,   \
                                  hi, next_step, max_iter, below, above, span_factor,      \
                                  tiny_eps, dpr, rpr);                                     \
            t_out[r] = row.t;                                                              \
            s_out[r] = row.s;                                                              \
            target_out[r] = row.target;                                                    \
            reach_out[r] = (int8_t)row.reachable;                                          \
            scale_out[r] = row.d_scale;                                                    \
            count_out[r] = row.count;                                                      \
            done_out[r] = (int8_t)row.done;                                                \
            eta_out[r] = row.eta;                                                          \
            flags_out[r] = (int8_t)row.flags;                                              \
        }                                                                                  \
        free(dpr);                                                                         \
        return 0;                                                                          \
    }

CAR_NEWTON_ROWS(float, newton_row_f32_p1, rows_f32_p1)
CAR_NEWTON_ROWS(float, newton_row_f32_p2, rows_f32_p2)
CAR_NEWTON_ROWS(double, newton_row_f64_p1, rows_f64_p1)
CAR_NEWTON_ROWS(double, newton_row_f64_p2, rows_f64_p2)

/* The Newton solve of one row for a p other than 1 and 2, in double (as
 * car_attacks.core.solvers._PowerProblem): the directions scaled by d_scale = max |d|, the
 * room by r_scale (eps where it lies in (0, max r), else max r, or 1), the scaled room
 * capped at (DBL_MAX / (2 n))^(1/p) so that no power overflows; dp = (|d| / d_scale)^p,
 * rp = (r / r_scale)^p (0 where d does not move) written to the buffer with the checks in
 * the pass before; E = (eps / r_scale)^p (0 where unreachable); then the iterations and
 * eta = t^(1/p) r_scale / d_scale where that closed form applies (flags: CAR_CLOSED). */
static inline car_row_double newton_row_general(const double *xr, const double *dr, double eps,
                                                int64_t n_cols, double lo, double hi,
                                                double p, double next_step, int max_iter,
                                                double below, double above, double *dpr,
                                                double *rpr) {
    double largest = 0, largest_room = 0;
    int bad = 0;
#pragma omp simd reduction(max : largest, largest_room) reduction(+ : bad)
    for (int64_t i = 0; i < n_cols; ++i) {
        double a = dr[i] < 0 ? -dr[i] : dr[i];
        double room = dr[i] >= 0 ? hi - xr[i] : xr[i] - lo;
        room = room > 0 ? room : 0.0;
        largest = a > largest ? a : largest;
        largest_room = room > largest_room ? room : largest_room;
        bad += !(xr[i] >= below && xr[i] <= above) || !(dr[i] - dr[i] == 0);
    }
    bad += !(eps >= 0 && eps - eps == 0);
    double d_scale = largest > 0 ? largest : 1.0;
    double r_scale = eps > 0 && eps < largest_room ? eps : (largest_room > 0 ? largest_room : 1.0);
    double cap = pow(DBL_MAX / (2.0 * (double)n_cols), 1.0 / p);
    double slope0 = 0.0, reach = 0.0;
    for (int64_t i = 0; i < n_cols; ++i) { /* pow: not vectorised (IEEE libm) */
        double a = dr[i] < 0 ? -dr[i] : dr[i];
        double room = dr[i] >= 0 ? hi - xr[i] : xr[i] - lo;
        room = room > 0 ? room / r_scale : 0.0;
        room = room < cap ? room : cap;
        double dp = pow(a / d_scale, p);
        double rp = dp > 0 ? pow(room, p) : 0.0;
        dpr[i] = dp;
        rpr[i] = rp;
        slope0 += rp > 0 ? dp : 0.0;
        reach += rp;
    }
    int reachable = pow(eps / r_scale, p) <= reach;
    double target = pow((reachable ? eps : 0.0) / r_scale, p);
    CAR_ITERATE(double)
    int flags = bad > 0 ? CAR_CHECK_FAILED : 0;
    int stuck = s <= 0 && target > 0;
    double eta = 0;
    if (done && reachable && !stuck && t < INFINITY) {
        eta = (t > 0 ? pow(t, 1.0 / p) : 0.0) * r_scale / d_scale;
        flags |= CAR_CLOSED;
    }
    car_row_double result = {t, s, target, d_scale, eta, reachable, count, done, flags};
    return result;
}

/* The entry point of the solve for a p other than 1 and 2 (double); per row eta (where
 * CAR_CLOSED), the iterations and the flags; rows on `threads` threads. */
typedef struct {
    const double *x, *d, *eps;
    int64_t n_cols;
    double lo, hi, p, next_step;
    int max_iter;
    double below, above;
    double *eta_out;
    int32_t *count_out;
    int8_t *flags_out;
} car_newton_general_args;

static int car_newton_general_block(const void *args, int64_t first, int64_t last) {
    const car_newton_general_args *a = (const car_newton_general_args *)args;
    double *dpr = (double *)malloc(2 * (size_t)a->n_cols * sizeof(double));
    if (dpr == NULL) return 1;
    for (int64_t r = first; r < last; ++r) {
        int64_t at = r * a->n_cols;
        car_row_double row = newton_row_general(a->x + at, a->d + at, a->eps[r], a->n_cols,
                                                a->lo, a->hi, a->p, a->next_step, a->max_iter,
                                                a->below, a->above, dpr, dpr + a->n_cols);
        a->eta_out[r] = row.eta;
        a->count_out[r] = row.count;
        a->flags_out[r] = (int8_t)row.flags;
    }
    free(dpr);
    return 0;
}

int car_newton_general_f64(const double *x, const double *d, const double *eps, int64_t n_rows,
                       int64_t n_cols, double lo, double hi, double p, double next_step,
                       int max_iter, double below, double above, double *eta_out,
                       int32_t *count_out, int8_t *flags_out, int threads) {
    car_newton_general_args a = {x, d, eps, n_cols, lo, hi, p, next_step, max_iter,
                                 below, above, eta_out, count_out, flags_out};
    return car_parallel(car_newton_general_block, &a, n_rows, threads);
}

/* The entry points: p = 2 where square, else p = 1; rows on `threads` threads. */
#define CAR_NEWTON(T, NAME, P1, P2)                                                        \
    typedef struct {                                                                       \
        const T *x, *d, *eps;                                                              \
        int64_t n_cols;                                                                    \
        T lo, hi, next_step;                                                               \
        int square, max_iter;                                                              \
        T below, above, span_factor, tiny_eps;                                             \
        T *t_out, *s_out, *target_out;                                                     \
        int8_t *reach_out;                                                                 \
        T *scale_out;                                                                      \
        int32_t *count_out;                                                                \
        int8_t *done_out;                                                                  \
        T *eta_out;                                                                        \
        int8_t *flags_out;                                                                 \
    } NAME##_args;                                                                         \
    static int NAME##_block(const void *args, int64_t first, int64_t last) {               \
        const NAME##_args *a = (const NAME##_args *)args;                                  \
        int64_t at = first * a->n_cols;                                                    \
        return (a->square ? P2 : P1)(                                                      \
            a->x + at, a->d + at, a->eps + first, last - first, a->n_cols, a->lo, a->hi,   \
            a->next_step, a->max_iter, a->below, a->above, a->span_factor, a->tiny_eps,    \
            a->t_out + first, a->s_out + first, a->target_out + first,                     \
            a->reach_out + first, a->scale_out + first, a->count_out + first,              \
            a->done_out + first, a->eta_out + first, a->flags_out + first);                \
    }                                                                                      \
    int NAME(const T *x, const T *d, const T *eps, int64_t n_rows, int64_t n_cols, T lo,   \
             T hi, T next_step, int square, int max_iter, T below, T above, T span_factor, \
             T tiny_eps, T *t_out, T *s_out, T *target_out, int8_t *reach_out,             \
             T *scale_out, int32_t *count_out, int8_t *done_out, T *eta_out,               \
             int8_t *flags_out, int threads) {                                             \
        NAME##_args a = {x, d, eps, n_cols, lo, hi, next_step, square, max_iter, below,    \
                         above, span_factor, tiny_eps, t_out, s_out, target_out,           \
                         reach_out, scale_out, count_out, done_out, eta_out, flags_out};   \
        return car_parallel(NAME##_block, &a, n_rows, threads);                            \
    }

CAR_NEWTON(float, car_newton_f32, rows_f32_p1, rows_f32_p2)
CAR_NEWTON(double, car_newton_f64, rows_f64_p1, rows_f64_p2)

/* clip(v) to [lo, hi] as torch.clamp: min(max(v, lo), hi). */
#define CAR_CLIP(v, lo, hi) ((v) > (lo) ? ((v) < (hi) ? (v) : (hi)) : ((lo) < (hi) ? (lo) : (hi)))

/* The exact L2-ball ∩ box projection (car_attacks.core.projection.project_l2), one row
 * at a time: w = z - x0 written to a buffer with ||clip(z) - x0||_2^2 (squares in double)
 * and the checks in one pass; clip(z) where that is <= eps^2 (CAR_INSIDE), else
 * clip(x0 + eta w) with eta = min(1, sqrt(t) / d_scale) from the Newton solve of w (the
 * rescaling equation; the buffer and the powers stay in cache). Rows left to the caller
 * (CAR_LEFT, output not written): the solve did not finish or its closed form does not
 * apply (unreachable, no slope), the row needs float64 (CAR_WIDE), or, in double, the
 * sum of squares may have under- or overflowed (it lies outside [2^-900, DBL_MAX] and
 * some coordinate moved). Returns 1 where the buffer could not be allocated, else 0. */
#define CAR_PROJECT_L2_ROWS(T, ROW, NAME)                                                  \
    static int NAME(const T *x0, const T *z, const T *eps_in, int64_t n_rows,              \
                    int64_t n_cols, T lo, T hi, T next_step, int max_iter, T below,        \
                    T above, T span_factor, T tiny_eps, T *out, int8_t *flags_out) {       \
        T *wr = (T *)malloc(3 * (size_t)n_cols * sizeof(T));                               \
        if (wr == NULL) return 1;                                                          \
        T *dpr = wr + n_cols, *rpr = dpr + n_cols;                                         \
        for (int64_t r = 0; r < n_rows; ++r) {                                             \
            const T *xr = x0 + r * n_cols, *zr = z + r * n_cols;                           \
            T *outr = out + r * n_cols;                                                    \
            double square = 0.0;                                                           \
            int bad = 0, moved = 0;                                                        \
            _Pragma("omp simd reduction(+ : square, bad, moved)")                          \
            for (int64_t i = 0; i < n_cols; ++i) {                                         \
                wr[i] = zr[i] - xr[i];                                                     \
                T c = CAR_CLIP(zr[i], lo, hi);                                             \
                double v = (double)(c - xr[i]);                                            \
                square += v * v;                                                           \
                moved += v != 0;                                                           \
                bad += !(xr[i] >= below && xr[i] <= above) || !(zr[i] - zr[i] == 0);       \
            }                                                                              \
            T eps = eps_in[r];                                                             \
            bad += !(eps >= 0 && eps - eps == 0);                                          \
            int flags = bad > 0 ? CAR_CHECK_FAILED : 0;                                    \
            double e = eps;                                                                \
            int doubtful = sizeof(T) > 4 && moved > 0 && !(square >= 0x1p-900 && square <= DBL_MAX); \
            if (doubtful) {                                                                \
                flags |= CAR_LEFT;                                                         \
            } else if (square <= e * e) {                                                  \
                flags |= CAR_INSIDE;                                                       \
                _Pragma("omp simd")                                                        \
                for (int64_t i = 0; i < n_cols; ++i) outr[i] = CAR_CLIP(zr[i], lo, hi);    \
            } else {                                                                       \
                car_row_##T row = ROW(xr, wr, eps, n_cols, lo, hi, next_step, max_iter,    \
                                      below, above, span_factor, tiny_eps, dpr, rpr);      \
                flags |= row.flags & (CAR_CHECK_FAILED | CAR_WIDE);                        \
                if (!(row.flags & CAR_CLOSED) || (row.flags & CAR_WIDE)) {                 \
                    flags |= CAR_LEFT;                                                     \
                } else {                                                                   \
                    T eta = row.eta < 1 ? row.eta : (T)1;                                  \
                    _Pragma("omp simd")                                                    \
                    for (int64_t i = 0; i < n_cols; ++i) {                                 \
                        T v = xr[i] + eta * wr[i];                                         \
                        outr[i] = CAR_CLIP(v, lo, hi);                                     \
                    }                                                                      \
                }                                                                          \
            }                                                                              \
            flags_out[r] = (int8_t)flags;                                                  \
        }                                                                                  \
        free(wr);                                                                          \
        return 0;                                                                          \
    }

CAR_PROJECT_L2_ROWS(float, newton_row_f32_p2, project_l2_rows_f32)
CAR_PROJECT_L2_ROWS(double, newton_row_f64_p2, project_l2_rows_f64)

/* The exact L1-ball ∩ box projection (car_attacks.core.projection.project_l1), one row at
 * a time: the soft threshold x0 + sign(w) min((|w| - lam)_+, r) with
 * h(lam) = sum_i min((a_i - lam)_+, r_i) = eps (a = |w|, w = z - x0, r the room along w),
 * by the safeguarded Newton of car_attacks.core.l1_threshold.newton_step on scalars: the
 * bracket h(lo) > eps >= h(hi) with the counts #{a_i > lam} and #{a_i - r_i > lam} at its
 * ends, a Newton point outside it replaced by bisection, a flat h above eps stepping to
 * the next breakpoint, and exact once a Newton step crosses no breakpoint (equal counts)
 * or the bracket holds one segment. a and r are written to a two-row buffer in the first
 * pass (with the checks); the passes after it read that buffer in cache. clip(z) where
 * h(0) <= eps (CAR_INSIDE); a row whose rounded norm h(lam) exceeds eps is scaled by
 * eps / h(lam). Rows not done after max_iter steps are left to the caller (CAR_LEFT,
 * output not written). Returns 1 where the buffer could not be allocated, else 0. */
#define CAR_PROJECT_L1_ROWS(T, NAME)                                                       \
    static int NAME(const T *x0, const T *z, const T *eps_in, int64_t n_rows,              \
                    int64_t n_cols, T lo, T hi, int max_iter, T below, T above, T *out,    \
                    int8_t *flags_out) {                                                   \
        T *sizes = (T *)malloc(2 * (size_t)n_cols * sizeof(T));                            \
        if (sizes == NULL) return 1;                                                       \
        T *rooms = sizes + n_cols;                                                         \
        for (int64_t r = 0; r < n_rows; ++r) {                                             \
            const T *xr = x0 + r * n_cols, *zr = z + r * n_cols;                           \
            T *outr = out + r * n_cols;                                                    \
            T largest = 0;                                                                 \
            int bad = 0;                                                                   \
            _Pragma("omp simd reduction(max : largest) reduction(+ : bad)")                \
            for (int64_t i = 0; i < n_cols; ++i) {                                         \
                T w = zr[i] - xr[i];                                                       \
                T a = w < 0 ? -w : w;                                                      \
                T room = w >= 0 ? hi - xr[i] : xr[i] - lo;                                 \
                room = room > 0 ? room : (T)0;                                             \
                sizes[i] = a;                                                              \
                rooms[i] = room;                                                           \
                largest = a > largest ? a : largest;                                       \
                bad += !(xr[i] >= below && xr[i] <= above) || !(zr[i] - zr[i] == 0);       \
            }                                                                              \
            T eps = eps_in[r];                                                             \
            bad += !(eps >= 0 && eps - eps == 0);                                          \
            /* the state of l1_threshold.initial_state, at lam = 0 */                      \
            T lam = 0, b_lo = 0, b_hi = largest;                                           \
            int64_t lo_pos = 0, lo_sat = 0, hi_pos = 0, hi_sat = 0;                        \
            int64_t prev_pos = -1, prev_sat = -1;                                          \
            int was_newton = 0, st_done = -1, done = 0, inside = 0, steps = 0;             \
            T h = 0;                                                                       \
            if (eps == 0 && largest > 0) { /* h(lam) = 0 from lam = max a on */            \
                lam = largest;                                                             \
                done = 1;                                                                  \
            }                                                                              \
            while (!done) {                                                                \
                double h_sum = 0.0;                                                        \
                int64_t positive = 0, saturated = 0;                                       \
                T following = (T)INFINITY;                                                 \
                _Pragma("omp simd reduction(+ : h_sum, positive, saturated) reduction(min : following)") \
                for (int64_t i = 0; i < n_cols; ++i) {                                     \
                    T t = sizes[i] - lam;                                                  \
                    T room = rooms[i];                                                     \
                    T start = sizes[i] - room; /* where it leaves saturation */            \
                    T part = t > 0 ? t : (T)0;                                             \
                    part = part < room ? part : room;                                      \
                    h_sum += (double)part;                                                 \
                    positive += t > 0;                                                     \
                    int sat = start > lam;                                                 \
                    saturated += sat;                                                      \
                    T next = sat ? start : (T)INFINITY;                                    \
                    following = next < following ? next : following;                       \
                }                                                                          \
                h = (T)h_sum;                                                              \
                T active = (T)(positive - saturated);                                      \
                if (st_done < 0) { /* lam = 0: initial_state */                            \
                    lo_pos = positive;                                                     \
                    lo_sat = saturated;                                                    \
                    inside = h <= eps;                                                     \
                    st_done = inside;                                                      \
                }                                                                          \
                int same = positive == prev_pos && saturated == prev_sat;                  \
                int exact = h == eps || (was_newton && same);                              \
                done = st_done || exact;                                                   \
                if (done || steps == max_iter) break;                                      \
                int above_eps = h > eps;                                                   \
                int flat = active == 0 && above_eps;                                       \
                if (above_eps) {                                                           \
                    b_lo = lam;                                                            \
                    lo_pos = positive;                                                     \
                    lo_sat = saturated;                                                    \
                } else {                                                                   \
                    b_hi = lam;                                                            \
                    hi_pos = positive;                                                     \
                    hi_sat = saturated;                                                    \
                }                                                                          \
                T newton = lam + (h - eps) / (active > 1 ? active : (T)1);                 \
                newton = newton > 0 ? newton : (T)0;                                       \
                int in_bracket = (newton > b_lo && newton < b_hi) || newton == lam;        \
                was_newton = active > 0 && in_bracket;                                     \
                T mid = (b_lo + b_hi) / 2;                                                 \
                T next_lam = was_newton ? newton : mid;                                    \
                if (flat) next_lam = following < b_hi ? following : b_hi;                  \
                int one_segment = lo_pos == hi_pos && lo_sat == hi_sat && active > 0;      \
                int tight = !was_newton && (mid <= b_lo || mid >= b_hi);                   \
                int settle = one_segment || tight;                                         \
                if (settle) {                                                              \
                    T clipped = newton > b_lo ? newton : b_lo;                             \
                    next_lam = one_segment ? (clipped < b_hi ? clipped : b_hi) : b_hi;     \
                    st_done = 1;                                                           \
                }                                                                          \
                prev_pos = positive;                                                       \
                prev_sat = saturated;                                                      \
                lam = next_lam;                                                            \
                steps += 1;                                                                \
            }                                                                              \
            int flags = bad > 0 ? CAR_CHECK_FAILED : 0;                                    \
            if (inside) {                                                                  \
                flags |= CAR_INSIDE;                                                       \
                _Pragma("omp simd")                                                        \
                for (int64_t i = 0; i < n_cols; ++i) outr[i] = CAR_CLIP(zr[i], lo, hi);    \
            } else if (!done) {                                                            \
                flags |= CAR_LEFT;                                                         \
            } else {                                                                       \
                /* the rows whose norm rounding pushed past eps are shrunk onto the ball */ \
                T scale = h > eps ? eps / h : (T)1;                                        \
                _Pragma("omp simd")                                                        \
                for (int64_t i = 0; i < n_cols; ++i) {                                     \
                    T w = zr[i] - xr[i];                                                   \
                    T part = sizes[i] - lam;                                               \
                    part = part > 0 ? part : (T)0;                                         \
                    part = (part < rooms[i] ? part : rooms[i]) * scale;                    \
                    T v = xr[i] + (w > 0 ? part : (w < 0 ? -part : (T)0));                 \
                    outr[i] = CAR_CLIP(v, lo, hi);                                         \
                }                                                                          \
            }                                                                              \
            flags_out[r] = (int8_t)flags;                                                  \
        }                                                                                  \
        free(sizes);                                                                       \
        return 0;                                                                          \
    }

CAR_PROJECT_L1_ROWS(float, project_l1_rows_f32)
CAR_PROJECT_L1_ROWS(double, project_l1_rows_f64)

/* The exact L-inf-ball ∩ box projection (car_attacks.core.projection.project_linf), one
 * pass per row with the checks: clip(z, max(lo, x0 - eps), min(hi, x0 + eps)). */
#define CAR_PROJECT_LINF_ROWS(T, NAME)                                                     \
    static int NAME(const T *x0, const T *z, const T *eps_in, int64_t n_rows,              \
                    int64_t n_cols, T lo, T hi, T below, T above, T *out,                  \
                    int8_t *flags_out) {                                                   \
        for (int64_t r = 0; r < n_rows; ++r) {                                             \
            const T *xr = x0 + r * n_cols, *zr = z + r * n_cols;                           \
            T *outr = out + r * n_cols;                                                    \
            T eps = eps_in[r];                                                             \
            int bad = !(eps >= 0 && eps - eps == 0);                                       \
            _Pragma("omp simd reduction(+ : bad)")                                         \
            for (int64_t i = 0; i < n_cols; ++i) {                                         \
                T low = xr[i] - eps, high = xr[i] + eps;                                   \
                low = low > lo ? low : lo;                                                 \
                high = high < hi ? high : hi;                                              \
                T v = zr[i] > low ? zr[i] : low;                                           \
                outr[i] = v < high ? v : high;                                             \
                bad += !(xr[i] >= below && xr[i] <= above) || !(zr[i] - zr[i] == 0);       \
            }                                                                              \
            flags_out[r] = (int8_t)(bad > 0 ? CAR_CHECK_FAILED : 0);                       \
        }                                                                                  \
        return 0;                                                                          \
    }

CAR_PROJECT_LINF_ROWS(float, project_linf_rows_f32)
CAR_PROJECT_LINF_ROWS(double, project_linf_rows_f64)

/* The entry points of the projections: norm 1, 2, or 0 for inf; rows on `threads`
 * threads; per row the output (where not left) and the flags above. */
#define CAR_PROJECT(T, NAME, L1_ROWS, L2_ROWS, LINF_ROWS)                                  \
    typedef struct {                                                                       \
        const T *x0, *z, *eps;                                                             \
        int64_t n_cols;                                                                    \
        T lo, hi, next_step;                                                               \
        int norm, max_iter;                                                                \
        T below, above, span_factor, tiny_eps;                                             \
        T *out;                                                                            \
        int8_t *flags_out;                                                                 \
    } NAME##_args;                                                                         \
    static int NAME##_block(const void *args, int64_t first, int64_t last) {               \
        const NAME##_args *a = (const NAME##_args *)args;                                  \
        int64_t at = first * a->n_cols;                                                    \
        if (a->norm == 2)                                                                  \
            return L2_ROWS(a->x0 + at, a->z + at, a->eps + first, last - first,            \
                           a->n_cols, a->lo, a->hi, a->next_step, a->max_iter, a->below,   \
                           a->above, a->span_factor, a->tiny_eps, a->out + at,             \
                           a->flags_out + first);                                          \
        if (a->norm == 1)                                                                  \
            return L1_ROWS(a->x0 + at, a->z + at, a->eps + first, last - first,            \
                           a->n_cols, a->lo, a->hi, a->max_iter, a->below, a->above,       \
                           a->out + at, a->flags_out + first);                             \
        return LINF_ROWS(a->x0 + at, a->z + at, a->eps + first, last - first, a->n_cols,   \
                         a->lo, a->hi, a->below, a->above, a->out + at,                    \
                         a->flags_out + first);                                            \
    }                                                                                      \
    int NAME(const T *x0, const T *z, const T *eps, int64_t n_rows, int64_t n_cols, T lo,  \
             T hi, T next_step, int norm, int max_iter, T below, T above, T span_factor,   \
             T tiny_eps, T *out, int8_t *flags_out, int threads) {                         \
        NAME##_args a = {x0, z, eps, n_cols, lo, hi, next_step, norm, max_iter, below,     \
                         above, span_factor, tiny_eps, out, flags_out};                    \
        return car_parallel(NAME##_block, &a, n_rows, threads);                            \
    }

CAR_PROJECT(float, car_project_f32, project_l1_rows_f32, project_l2_rows_f32,
            project_linf_rows_f32)
CAR_PROJECT(double, car_project_f64, project_l1_rows_f64, project_l2_rows_f64,
            project_linf_rows_f64)

/* The exact L-inf scale (car_attacks.core.solvers.linf_eta), one row at a time:
 * eta = e / max{|d_i| : r_i >= e} with e = min(eps, max{r_i : d_i != 0}) (0 where no
 * coordinate qualifies), r the room along d. One pass at e = eps (with the checks: flags
 * bit 0 as in CAR_CHECK_FAILED, x outside [below, above] or not finite, d or eps not
 * finite, eps < 0), a second over the row (in cache) where eps exceeds the reach. */
#define CAR_LINF_ROWS(T, NAME)                                                             \
    static int NAME(const T *x, const T *d, const T *eps_in, int64_t n_rows,               \
                    int64_t n_cols, T lo, T hi, T below, T above, T *eta_out,              \
                    int8_t *flags_out) {                                                   \
        for (int64_t r = 0; r < n_rows; ++r) {                                             \
            const T *xr = x + r * n_cols, *dr = d + r * n_cols;                            \
            T eps = eps_in[r], reach = 0, fastest = 0;                                     \
            int bad = 0;                                                                   \
            _Pragma("omp simd reduction(max : reach, fastest) reduction(+ : bad)")         \
            for (int64_t i = 0; i < n_cols; ++i) {                                         \
                T a = dr[i] < 0 ? -dr[i] : dr[i];                                          \
                T room = dr[i] >= 0 ? hi - xr[i] : xr[i] - lo;                             \
                room = room > 0 ? room : (T)0;                                             \
                T moving = dr[i] != 0 ? room : (T)0;                                       \
                reach = moving > reach ? moving : reach;                                   \
                T speed = room >= eps ? a : (T)0;                                          \
                fastest = speed > fastest ? speed : fastest;                               \
                bad += !(xr[i] >= below && xr[i] <= above) || !(dr[i] - dr[i] == 0);       \
            }                                                                              \
            bad += !(eps >= 0 && eps - eps == 0);                                          \
            T target = eps;                                                                \
            if (eps > reach) { /* saturates at the largest room */                         \
                target = reach;                                                            \
                fastest = 0;                                                               \
                _Pragma("omp simd reduction(max : fastest)")                               \
                for (int64_t i = 0; i < n_cols; ++i) {                                     \
                    T a = dr[i] < 0 ? -dr[i] : dr[i];                                      \
                    T room = dr[i] >= 0 ? hi - xr[i] : xr[i] - lo;                         \
                    room = room > 0 ? room : (T)0;                                         \
                    T speed = room >= target ? a : (T)0;                                   \
                    fastest = speed > fastest ? speed : fastest;                           \
                }                                                                          \
            }                                                                              \
            eta_out[r] = fastest > 0 ? target / fastest : (T)0;                            \
            flags_out[r] = (int8_t)(bad > 0 ? CAR_CHECK_FAILED : 0);                       \
        }                                                                                  \
        return 0;                                                                          \
    }

CAR_LINF_ROWS(float, linf_rows_f32)
CAR_LINF_ROWS(double, linf_rows_f64)

/* The entry points of the L-inf scale; rows on `threads` threads. */
#define CAR_LINF(T, NAME, ROWS)                                                            \
    typedef struct {                                                                       \
        const T *x, *d, *eps;                                                              \
        int64_t n_cols;                                                                    \
        T lo, hi, below, above;                                                            \
        T *eta_out;                                                                        \
        int8_t *flags_out;                                                                 \
    } NAME##_args;                                                                         \
    static int NAME##_block(const void *args, int64_t first, int64_t last) {               \
        const NAME##_args *a = (const NAME##_args *)args;                                  \
        int64_t at = first * a->n_cols;                                                    \
        return ROWS(a->x + at, a->d + at, a->eps + first, last - first, a->n_cols, a->lo,  \
                    a->hi, a->below, a->above, a->eta_out + first, a->flags_out + first);  \
    }                                                                                      \
    int NAME(const T *x, const T *d, const T *eps, int64_t n_rows, int64_t n_cols, T lo,   \
             T hi, T below, T above, T *eta_out, int8_t *flags_out, int threads) {         \
        NAME##_args a = {x, d, eps, n_cols, lo, hi, below, above, eta_out, flags_out};     \
        return car_parallel(NAME##_block, &a, n_rows, threads);                            \
    }

CAR_LINF(float, car_linf_eta_f32, linf_rows_f32)
CAR_LINF(double, car_linf_eta_f64, linf_rows_f64)
