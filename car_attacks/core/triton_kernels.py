"""The Triton source of :mod:`~car_attacks.core.triton_newton`'s kernel (imports Triton;
jitted there, on first use; no postponed annotations: Triton reads ``tl.constexpr``). See
that module for what it computes."""

import triton.language as tl


def newton_rows(  # type: ignore[no-untyped-def]
    x_ptr,
    d_ptr,
    eps_ptr,
    params_ptr,
    t_ptr,
    s_ptr,
    target_ptr,
    reach_ok_ptr,
    scale_ptr,
    count_ptr,
    done_ptr,
    n_cols,
    max_iter,
    SQUARE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * n_cols
    d_row = d_ptr + row * n_cols
    offsets = tl.arange(0, BLOCK)
    lo = tl.load(params_ptr)
    hi = tl.load(params_ptr + 1)
    next_step = tl.load(params_ptr + 2)
    eps = tl.load(eps_ptr + row)
    zero = eps * 0.0
    # the pass at t = 0: S(0) and the largest value of g (float64, of the unscaled
    # powers), and max |delta|
    slope0_acc = tl.zeros([BLOCK], tl.float64)
    reach_acc = tl.zeros([BLOCK], tl.float64)
    big = tl.zeros([BLOCK], eps.dtype)
    for start in range(0, n_cols, BLOCK):
        idx = start + offsets
        inside = idx < n_cols
        xv = tl.load(x_row + idx, mask=inside, other=0.0)
        dv = tl.load(d_row + idx, mask=inside, other=0.0)
        size = tl.abs(dv)
        room = tl.maximum(tl.where(dv >= 0, hi - xv, xv - lo), 0.0)
        room = tl.where(size > 0, room, 0.0)
        d64 = size.to(tl.float64)
        r64 = room.to(tl.float64)
        if SQUARE:
            dp64 = d64 * d64
            rp64 = r64 * r64
        else:
            dp64 = d64
            rp64 = r64
        slope0_acc += tl.where(rp64 > 0, dp64, 0.0)
        reach_acc += rp64
        big = tl.maximum(big, size)
    slope0 = tl.sum(slope0_acc, axis=0)
    reach = tl.sum(reach_acc, axis=0)
    largest = tl.max(big, axis=0)
    # the start (fused_newton._newton_start)
    if SQUARE:
        d_scale = tl.where(largest > 0, largest, zero + 1.0)
        ds64 = d_scale.to(tl.float64)
        slope0 = slope0 / (ds64 * ds64)
        reachable = eps * eps <= reach.to(eps.dtype)
        e = tl.where(reachable, eps, zero)
        target = e * e
    else:
        d_scale = zero + 1.0
        reachable = eps <= reach.to(eps.dtype)
        target = tl.where(reachable, eps, zero)
    s = slope0.to(eps.dtype)
    step = tl.maximum(target / tl.where(s > 0, s, zero + 1.0), 0.0)
    t = step
    previous = s
    near = step <= next_step * step
    done = (row * 0).to(tl.int32)
    count = (row * 0 + 1).to(tl.int32)
    while (done == 0) & (count < max_iter):
        g_acc = tl.zeros([BLOCK], tl.float64)
        slope_acc = tl.zeros([BLOCK], tl.float64)
        nearest_acc = tl.full([BLOCK], float("inf"), eps.dtype)
        for start in range(0, n_cols, BLOCK):
            idx = start + offsets
            inside = idx < n_cols
            xv = tl.load(x_row + idx, mask=inside, other=0.0)
            dv = tl.load(d_row + idx, mask=inside, other=0.0)
            room = tl.maximum(tl.where(dv >= 0, hi - xv, xv - lo), 0.0)
            if SQUARE:
                q = tl.abs(dv) / d_scale
                dp = q * q
                rp = tl.where(dp > 0, room * room, 0.0)
            else:
                dp = tl.abs(dv)
                rp = tl.where(dp > 0, room, 0.0)
            moved = t * dp
            active = rp - moved > 0
            g_acc += tl.minimum(moved, rp).to(tl.float64)
            slope_acc += tl.where(active, dp, 0.0).to(tl.float64)
            nearest_acc = tl.minimum(nearest_acc, tl.where(active, rp / dp, float("inf")))
        g = tl.sum(g_acc, axis=0).to(eps.dtype)
        slope = tl.sum(slope_acc, axis=0).to(eps.dtype)
        nearest = tl.min(nearest_acc, axis=0)
        count += 1
        s = slope
        repeated = slope == previous
        step = tl.maximum((target - g) / tl.where(slope > 0, slope, zero + 1.0), 0.0)
        new = tl.where(repeated, t, t + step)
        landed = near & (new <= nearest)  # before the next breakpoint
        done = (repeated | landed).to(tl.int32)
        near = near | (step <= next_step * new)
        t = new
        previous = slope
    tl.store(t_ptr + row, t)
    tl.store(s_ptr + row, s)
    tl.store(target_ptr + row, target)
    tl.store(reach_ok_ptr + row, reachable.to(tl.int8))
    tl.store(scale_ptr + row, d_scale)
    tl.store(count_ptr + row, count)
    tl.store(done_ptr + row, done.to(tl.int8))
