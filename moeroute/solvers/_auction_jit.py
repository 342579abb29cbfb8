"""Compiled kernels (numba) of the CPU price auction, moeroute/solvers/auction.py. Only that module imports this one,
inside its functions: ``import moeroute`` never loads numba. The algorithm, its invariants and its guarantee are
described in moeroute/solvers/auction.py and docs/dual.md.

Layout, chosen by measurement (benchmarks/PERF.md): integer values ``v = round(S * scale)`` (int32; masked
maxima over a row vectorise, float ones do not); each expert's holders in a contiguous array with the value they
hold it at and a lower bound on their margin's key, so that a shed reads its holders sequentially and looks up
only the few that may leave; each token's few best free experts cached in one row.
"""

from __future__ import annotations

import numpy as np
from numba import njit

FREE = 0
HELD = 1
FORBIDDEN = 2
NEG = -(np.int64(1) << np.int64(62))
# A token's cache row holds its few best free experts when last scanned (so that a rise of its best alternative's
# price costs a look at these, not a scan of its row): [count, bound, expert ids..., their values v...], the bound
# being an upper bound on the reduced value of every free expert not in it (prices only rise, so it stays one).
C_COUNT = 0
C_BOUND = 1
C_NODE = 2
# Entries of ``stats``.
S_SWEEPS, S_SHEDS, S_EXCESS, S_PLACED, S_OPEN, S_DROPPED, S_CONVERGED, S_SCANS = range(8)
STATS = 8
# Entries of ``cert``.
C_DUAL, C_OBJECTIVE, C_DROP, C_UNIT = range(4)
CERT = 4


@njit(cache=True)
def _select_smallest(keys, ids, n, x):
    """Reorder ``keys[:n]`` (``ids`` alongside) so that its ``x`` smallest come first, the ``x``-th at ``x - 1``."""
    lo, hi = 0, n - 1
    want = x - 1
    while lo < hi:
        pivot = keys[(lo + hi) >> 1]
        i, j = lo, hi
        while i <= j:
            while keys[i] < pivot:
                i += 1
            while keys[j] > pivot:
                j -= 1
            if i <= j:
                keys[i], keys[j] = keys[j], keys[i]
                ids[i], ids[j] = ids[j], ids[i]
                i += 1
                j -= 1
        if want <= j:
            hi = j
        elif want >= i:
            lo = i
        else:
            break


@njit(cache=True, inline="always")
def _masked(v_row, st_row, p, e):
    r = np.int64(v_row[e]) - p[e]
    return r if st_row[e] == FREE else NEG


@njit(cache=True)
def _top(v_row, st_row, p, e_count, m, tau, buf_v, buf_n, red):
    """The ``m`` free experts of largest reduced value ``v - p`` in a row, best first (first among equals), into
    ``buf_v`` / ``buf_n`` (``NEG`` / ``-1`` where the row has fewer); ``tau`` a guess of the ``m``-th value (e.g.
    the previous token's), ``red`` scratch ``[E]``. The reduced values and counts above a threshold are vectorised
    passes; the threshold is moved until between ``m`` and ``4 m`` values pass it (a few tries, else none), and
    only those enter the sorted buffer (measured twice as fast as one pass with the buffer, benchmarks/PERF.md)."""
    for e in range(e_count):
        red[e] = _masked(v_row, st_row, p, e)
    found = False
    for attempt in range(4):
        if tau <= NEG // 2:
            break
        count = 0
        for e in range(e_count):
            count += red[e] >= tau
        if count < m:
            tau -= (abs(tau) >> 1) + 1
        elif count <= 4 * m or attempt == 3:
            found = True
            break
        else:
            tau += (abs(tau) >> 3) + 1
    if not found:
        tau = NEG
    for j in range(m):
        buf_v[j] = NEG
        buf_n[j] = -1
    last = m - 1
    for e in range(e_count):
        x = red[e]
        if x < tau or x <= buf_v[last]:
            continue
        j = last
        while j > 0 and x > buf_v[j - 1]:
            buf_v[j] = buf_v[j - 1]
            buf_n[j] = buf_n[j - 1]
            j -= 1
        buf_v[j] = x
        buf_n[j] = e


@njit(cache=True, inline="always")
def _cached(cache_row):
    """How many experts a cache row can hold."""
    return (cache_row.shape[0] - C_NODE) >> 1


@njit(cache=True)
def _refill(v_row, st_row, p, e_count, cache_row):
    """Scan a token's row: its best free experts at prices ``p`` into its cache row, the next one's reduced value
    as the bound (``NEG`` if there is none)."""
    size = _cached(cache_row)
    buf_v = np.empty(size + 1, np.int64)
    buf_n = np.empty(size + 1, np.int64)
    # The old bound is near the new values (prices moved a little since): a good first threshold.
    _top(v_row, st_row, p, e_count, size + 1, cache_row[C_BOUND], buf_v, buf_n, np.empty(e_count, np.int64))
    count = 0
    for j in range(size):
        if buf_n[j] >= 0:
            cache_row[C_NODE + count] = buf_n[j]
            cache_row[C_NODE + size + count] = v_row[buf_n[j]]
            count += 1
    cache_row[C_COUNT] = count
    cache_row[C_BOUND] = buf_v[size]


@njit(cache=True, inline="always")
def _alternative(v, st, p, t, e_count, drop_red, cache, stats):
    """Token ``t``'s best node it does not hold at prices ``p``, and its reduced value: the best of its cached
    experts, or the drop node (``e_count``, worth ``drop_red``), when that is at least the bound on the others;
    else the row is scanned again first."""
    for attempt in range(2):
        best = drop_red
        at = e_count
        row = cache[t]
        size = _cached(row)
        for c in range(row[C_COUNT]):
            node = row[C_NODE + c]
            r = row[C_NODE + size + c] - p[node]
            if r > best or (r == best and node < at):
                best = r
                at = node
        if best >= row[C_BOUND] or attempt == 1:
            return at, best
        _refill(v[t], st[t], p, e_count, cache[t])
        stats[S_SCANS] += 1
    return e_count, drop_red


@njit(cache=True, inline="always")
def _forget(cache_row, node):
    """Take ``node`` out of a cache row (the token now holds it)."""
    count = cache_row[C_COUNT]
    val = C_NODE + _cached(cache_row)
    for c in range(count):
        if cache_row[C_NODE + c] == node:
            cache_row[C_NODE + c] = cache_row[C_NODE + count - 1]
            cache_row[val + c] = cache_row[val + count - 1]
            cache_row[C_COUNT] = count - 1
            return


@njit(cache=True, inline="always")
def _offer(cache_row, node, val, p):
    """``node`` (value ``val``) became free for the token: cache it if there is a place or it beats the weakest
    cached expert (which then leaves, raising the bound), else raise the bound to its reduced value."""
    count = cache_row[C_COUNT]
    size = _cached(cache_row)
    vals = C_NODE + size
    red = np.int64(val) - p[node]
    if count < size:
        cache_row[C_NODE + count] = node
        cache_row[vals + count] = val
        cache_row[C_COUNT] = count + 1
        return
    weakest = 0
    low = cache_row[vals] - p[cache_row[C_NODE]]
    for c in range(1, count):
        r = cache_row[vals + c] - p[cache_row[C_NODE + c]]
        if r < low:
            low = r
            weakest = c
    if red > low:
        cache_row[C_BOUND] = max(cache_row[C_BOUND], low)
        cache_row[C_NODE + weakest] = node
        cache_row[vals + weakest] = val
    else:
        cache_row[C_BOUND] = max(cache_row[C_BOUND], red)


@njit(cache=True, inline="always")
def _push(node, t, val, key, hold_tok, hold_val, hold_key, load):
    i = load[node]
    hold_tok[node, i] = t
    hold_val[node, i] = val
    hold_key[node, i] = key
    load[node] = i + 1


@njit(cache=True)
def _margins(v, st, p, e, hold_tok, hold_val, hold_key, load, e_count, drop_red, cache, alt_node, keys, ids, stats):
    """The margins of all holders of expert ``e`` (what each loses by moving to its best alternative) into
    ``keys``, their positions into ``ids``, each token's alternative into ``alt_node``; returns how many."""
    pe = p[e]
    count = load[e]
    for i in range(count):
        t = hold_tok[e, i]
        a, r = _alternative(v, st, p, t, e_count, drop_red, cache, stats)
        alt_node[t] = a
        key = np.int64(hold_val[e, i]) - r
        hold_key[e, i] = key
        keys[i] = key - pe
        ids[i] = i
    return count


@njit(cache=True)
def _smallest_margins(v, st, p, e, x, hold_tok, hold_val, hold_key, load, e_count, drop_red, cache, alt_node, keys,
                      ids, stats):
    """The ``x + 1`` smallest margins of the holders of ``e``, exactly, at ``keys[:x + 1]`` (positions in ``ids``,
    the tokens' alternatives in ``alt_node``), the ``x + 1``-th at ``keys[x]``.

    A holder's key ``v - (value of its best alternative)`` only grows (prices only rise, and a token that moves
    gives up its best alternative), so the stored keys are lower bounds: the ``x + 1`` smallest bounds, made exact,
    give an upper bound ``U`` on the ``x + 1``-th smallest margin, and only holders whose bound is below ``U`` can
    be among the smallest. Those are made exact; the others are not looked up (a shed is a sequential pass over
    the stored keys plus the few alternatives it looks up)."""
    # The key refresh is written out in both loops here and in _margins: as one inline helper it measured 4-5%
    # slower at 32x512x16 (benchmarks/PERF.md).
    pe = p[e]
    count = load[e]
    for i in range(count):
        keys[i] = hold_key[e, i] - pe
        ids[i] = i
    _select_smallest(keys, ids, count, x + 1)
    top = NEG
    for j in range(x + 1):
        i = ids[j]
        t = hold_tok[e, i]
        a, r = _alternative(v, st, p, t, e_count, drop_red, cache, stats)
        alt_node[t] = a
        key = np.int64(hold_val[e, i]) - r
        hold_key[e, i] = key
        keys[j] = key - pe
        top = max(top, keys[j])
    c = x + 1
    for j in range(x + 1, count):
        if keys[j] >= top:
            continue
        i = ids[j]
        t = hold_tok[e, i]
        a, r = _alternative(v, st, p, t, e_count, drop_red, cache, stats)
        alt_node[t] = a
        key = np.int64(hold_val[e, i]) - r
        hold_key[e, i] = key
        keys[c] = key - pe
        ids[c] = i
        c += 1
    _select_smallest(keys, ids, c, x + 1)


@njit(cache=True)
def _compact(e, hold_tok, hold_val, hold_key, load, leaving):
    """Drop the holders of ``e`` whose position is flagged in ``leaving`` (and clear the flags)."""
    w = 0
    for i in range(load[e]):
        if leaving[i]:
            leaving[i] = False
            continue
        hold_tok[e, w] = hold_tok[e, i]
        hold_val[e, w] = hold_val[e, i]
        hold_key[e, w] = hold_key[e, i]
        w += 1
    load[e] = w


@njit(cache=True)
def _integer_values(s, scale):
    """``v = round(S * scale)`` int32 ``[T, E]`` and the drop node's reduced value: the drop node takes a unit only
    when every expert it could take is priced out, so it is worth less than any expert at any price a full expert
    reaches (a price never exceeds a holder's value minus its alternative)."""
    t_count, e_count = s.shape
    v = np.empty((t_count, e_count), np.int32)
    vmin = np.int64(0)
    vmax = np.int64(0)
    for t in range(t_count):
        for e in range(e_count):
            x = np.int32(np.rint(np.float64(s[t, e]) * scale))
            v[t, e] = x
            vmin = min(vmin, np.int64(x))
            vmax = max(vmax, np.int64(x))
    return v, vmin - 2 * (vmax - vmin) - 1


@njit(cache=True)
def _token_states(t_count, e_count, fixed, cap):
    """Per token and expert: ``FORBIDDEN`` (a ``fixed`` expert of the token, or an expert without room), else
    ``FREE``: uint8 ``[T, E]``."""
    st = np.zeros((t_count, e_count), np.uint8)
    for e in range(e_count):
        if cap[e] <= 0:
            for t in range(t_count):
                st[t, e] = FORBIDDEN
    for t in range(t_count):
        for r in range(fixed.shape[1]):
            if fixed[t, r] >= 0:
                st[t, fixed[t, r]] = FORBIDDEN
    return st


@njit(cache=True)
def _start(v, st, p, demand, k, drop_red, cache, hold, drop_tok):
    """Every token takes its d best experts at the starting prices (the drop node for the rest); the next ones fill
    its cache, the one after bounds the others. The search threshold comes from the previous token. Returns the
    mean value a unit holds (integer units)."""
    t_count, e_count = v.shape
    hold_tok, hold_val, hold_key, load = hold
    cached = (cache.shape[1] - C_NODE) >> 1
    m = k + cached + 1
    buf_v = np.empty(m, np.int64)
    buf_n = np.empty(m, np.int64)
    unit_sum = 0.0
    unit_count = 0
    red = np.empty(e_count, np.int64)
    tau = NEG
    for t in range(t_count):
        d = demand[t]
        want = d + cached + 1
        _top(v[t], st[t], p, e_count, want, tau, buf_v, buf_n, red)
        tau = buf_v[want - 1]
        alt = max(buf_v[d], drop_red)
        for j in range(d):
            a = buf_n[j]
            if a >= 0 and buf_v[j] > drop_red:
                st[t, a] = HELD
                unit_sum += v[t, a]
                unit_count += 1
                # Its key, v minus the best value it does not hold, is exact at the start.
                _push(a, t, v[t, a], np.int64(v[t, a]) - alt, hold_tok, hold_val, hold_key, load)
            else:
                drop_tok[load[e_count]] = t
                load[e_count] += 1
        count = 0
        for j in range(d, d + cached):
            if buf_n[j] >= 0:
                cache[t, C_NODE + count] = buf_n[j]
                cache[t, C_NODE + cached + count] = v[t, buf_n[j]]
                count += 1
        cache[t, C_COUNT] = count
        cache[t, C_BOUND] = buf_v[d + cached]
    return unit_sum / max(unit_count, 1)


@njit(cache=True)
def _shed(e, x, step, v, st, p, drop_red, cache, alt_node, hold, drop_tok, work, stats):
    """Expert ``e`` holds ``x`` units too many: raise its price by its holders' ``(x+1)``-th smallest margin, or by
    the ``x``-th plus ``step`` if that is more, and move its ``x`` holders of smallest margin to their best
    alternatives. Exactly ``x`` leave (a raise up to the ``(x+1)``-th margin keeps every other holder's best
    response; the step ends trades between near-indifferent tokens, the holders in between keeping their place,
    each within ``step`` of its best response)."""
    e_count = v.shape[1]
    hold_tok, hold_val, hold_key, load = hold
    keys, ids, leaving = work
    _smallest_margins(v, st, p, e, x, hold_tok, hold_val, hold_key, load, e_count, drop_red, cache, alt_node, keys,
                      ids, stats)
    top = keys[0]
    for i in range(1, x):
        top = max(top, keys[i])
    p[e] += max(keys[x], top + step)
    for i in range(x):
        t = hold_tok[e, ids[i]]
        leaving[ids[i]] = True
        a = alt_node[t]
        st[t, e] = FREE
        if a < e_count:
            st[t, a] = HELD
            _forget(cache[t], a)
            # a is its best response: its key there is at least p[a].
            _push(a, t, v[t, a], p[a], hold_tok, hold_val, hold_key, load)
        else:
            drop_tok[load[e_count]] = t
            load[e_count] += 1
        _offer(cache[t], e, v[t, e], p)
    _compact(e, hold_tok, hold_val, hold_key, load, leaving)


@njit(cache=True)
def _sweeps(sweeps, step, capn, v, st, p, drop_red, cache, alt_node, hold, drop_tok, work, stats):
    """Gauss-Seidel sweeps over the experts, each over-full one shedding its excess, until none is over-full (then
    True) or ``sweeps`` sweeps are done."""
    e_count = v.shape[1]
    load = hold[3]
    while stats[S_SWEEPS] < sweeps:
        any_over = False
        for e in range(e_count):
            if load[e] > capn[e]:
                any_over = True
                stats[S_SHEDS] += 1
                _shed(e, load[e] - capn[e], step, v, st, p, drop_red, cache, alt_node, hold, drop_tok, work, stats)
        if not any_over:
            return True
        stats[S_SWEEPS] += 1
    return False


@njit(cache=True)
def _settle(capn, demand, v, st, p, drop_red, cache, alt_node, hold, drop_tok, work, stats):
    """After the budget: every over-full expert keeps its holders of largest margin; the others, and the units on
    the drop node (it is only for what capacity cannot take), take in token order their best expert with room by
    reduced value. What none can take stays open (the caller's repair decides whether an augmenting chain can still
    place it)."""
    t_count, e_count = v.shape
    hold_tok, hold_val, hold_key, load = hold
    keys, ids, leaving = work
    open_tok = np.empty(drop_tok.shape[0] + t_count, np.int32)
    n_open = 0
    for e in range(e_count):
        if load[e] <= capn[e]:
            continue
        count = _margins(v, st, p, e, hold_tok, hold_val, hold_key, load, e_count, drop_red, cache, alt_node, keys,
                         ids, stats)
        x = count - capn[e]
        stats[S_EXCESS] += x
        _select_smallest(keys, ids, count, x)
        for i in range(x):
            t = hold_tok[e, ids[i]]
            leaving[ids[i]] = True
            st[t, e] = FREE
            _offer(cache[t], e, v[t, e], p)
            open_tok[n_open] = t
            n_open += 1
        _compact(e, hold_tok, hold_val, hold_key, load, leaving)
    stats[S_DROPPED] = load[e_count]
    for i in range(load[e_count]):
        open_tok[n_open] = drop_tok[i]
        n_open += 1
    load[e_count] = 0
    stats[S_PLACED] = n_open
    open_tok[:n_open] = np.sort(open_tok[:n_open])
    room = np.empty(e_count, np.uint8)
    for e in range(e_count):
        room[e] = FREE if load[e] < capn[e] else HELD
    for i in range(n_open):
        t = open_tok[i]
        best = NEG
        best_e = -1
        for e in range(e_count):
            r = np.int64(v[t, e]) - p[e] if room[e] == FREE and st[t, e] == FREE else NEG
            if r > best:
                best = r
                best_e = e
        if best_e < 0:
            # No expert with room is free for t: try a chain of one move (t takes a full expert f whose holder u
            # moves on to an expert with room), the best by total value; longer chains are the caller's repair.
            best_e = _swap_in(t, capn, v, st, p, cache, hold, room)
        if best_e >= 0:
            st[t, best_e] = HELD
            _forget(cache[t], best_e)
            _push(best_e, t, v[t, best_e], p[best_e], hold_tok, hold_val, hold_key, load)
            room[best_e] = FREE if load[best_e] < capn[best_e] else HELD
        else:
            stats[S_OPEN] += 1


@njit(cache=True)
def _swap_in(t, capn, v, st, p, cache, hold, room):
    """Free a place for token ``t`` by one move: over the full experts ``f`` it may take, their holders ``u`` and
    the experts ``r`` with room that ``u`` may take, the move ``u: f -> r`` of largest ``v[t, f] + v[u, r] -
    v[u, f]``. Applies it and returns ``f`` (which ``t`` then takes), or ``-1`` if there is none."""
    e_count = v.shape[1]
    hold_tok, hold_val, hold_key, load = hold
    best = NEG
    best_f = -1
    best_i = -1
    best_r = -1
    for f in range(e_count):
        if st[t, f] != FREE or room[f] == FREE:
            continue
        for i in range(load[f]):
            u = hold_tok[f, i]
            for r in range(e_count):
                if room[r] == FREE and st[u, r] == FREE:
                    gain = np.int64(v[t, f]) + np.int64(v[u, r]) - np.int64(hold_val[f, i])
                    if gain > best:
                        best, best_f, best_i, best_r = gain, f, i, r
    if best_f < 0:
        return -1
    u = hold_tok[best_f, best_i]
    last = load[best_f] - 1
    hold_tok[best_f, best_i] = hold_tok[best_f, last]
    hold_val[best_f, best_i] = hold_val[best_f, last]
    hold_key[best_f, best_i] = hold_key[best_f, last]
    load[best_f] = last
    st[u, best_f] = FREE
    st[u, best_r] = HELD
    _forget(cache[u], best_r)
    _offer(cache[u], best_f, v[u, best_f], p)
    _push(best_r, u, v[u, best_r], p[best_r], hold_tok, hold_val, hold_key, load)
    room[best_r] = FREE if load[best_r] < capn[best_r] else HELD
    return best_f


@njit(cache=True)
def _collect(s, scale, demand, cap, v, st, p, drop_red, cache, hold, out, stats):
    """Each token's experts into ``out``, ordered by score (ties: lower expert first); returns the objective and the
    dual bound. A token's d best reduced values at p (the drop node worth drop_red, several units allowed) sum to at
    most the sum over its units of max(held value, best value it does not hold), an open unit counting with the
    latter; each integer value is within 0.5 / scale of its score."""
    t_count, e_count = v.shape
    hold_tok, hold_val, hold_key, load = hold
    k = out.shape[1]
    filled = np.zeros(t_count, np.int64)
    for t in range(t_count):
        for j in range(k):
            out[t, j] = -1
    for e in range(e_count):
        for i in range(load[e]):
            t = hold_tok[e, i]
            out[t, filled[t]] = e
            filled[t] += 1
    objective = 0.0
    dual = 0.0
    slack = 1.0 / scale
    for t in range(t_count):
        m = filled[t]
        for i in range(1, m):
            e = out[t, i]
            x = s[t, e]
            j = i
            while j > 0 and x > s[t, out[t, j - 1]]:
                out[t, j] = out[t, j - 1]
                j -= 1
            out[t, j] = e
        if demand[t] <= 0:
            continue
        a, r = _alternative(v, st, p, t, e_count, drop_red, cache, stats)
        best_alt = r / scale + slack
        for j in range(m):
            e = out[t, j]
            objective += s[t, e]
            dual += max(np.float64(s[t, e]) - p[e] / scale, best_alt)
        dual += (demand[t] - m) * best_alt
    for e in range(e_count):
        dual += cap[e] * (p[e] / scale)
    return objective, dual


@njit(cache=True)
def auction_group(s, scale, fixed, demand, cap, k, eps, sweeps, cached, out, prices, stats, cert):
    """One group. ``s`` float ``[T, E]`` scores, ``scale`` the integer scale (``|s| * scale <= 2^29``); ``fixed``
    int64 ``[T, R]`` experts a token holds already (it may not take them again; ``-1`` = none); ``demand`` int64
    ``[T]`` units per token (``<= k``); ``cap`` int64 ``[E]`` room per expert; ``eps`` the extra price step, as a
    fraction of the mean value a unit holds at the start; ``sweeps`` the budget of Gauss-Seidel sweeps over the
    experts; ``cached`` the free experts each token keeps at hand; ``prices`` float64 ``[E + 1]``: the starting
    prices (score units, 0 = cold; the drop node last), overwritten with the final ones.

    Writes ``out`` int64 ``[T, k]``: each token's new experts by score, best first, then ``-1`` (no unit, or one
    left open for the repair); ``stats`` int64 ``[STATS]`` (see ``S_*``); ``cert`` float64 ``[CERT]``: an upper
    bound on the dual function ``sum_t best_d(S - p) + sum_e cap_e p_e`` (the drop node a node worth ``drop``,
    unlimited), the objective (sum of the scores placed), ``drop`` and the mean value a unit holds at the start
    (score units)."""
    t_count, e_count = s.shape
    n = e_count + 1
    v, drop_red = _integer_values(s, scale)
    p = np.zeros(n, np.int64)
    for e in range(e_count):
        p[e] = np.int64(np.rint(max(prices[e], 0.0) * scale))
    capn = np.empty(n, np.int64)
    capn[:e_count] = cap
    capn[e_count] = t_count * k + 1  # the drop node never fills
    st = _token_states(t_count, e_count, fixed, cap)
    # Holders per expert, contiguous, with the value each holds it at and a lower bound on its key (an expert may
    # hold every token); the drop node's units by token.
    width = max(t_count, 1)
    hold = (np.empty((e_count, width), np.int32), np.empty((e_count, width), np.int32),
            np.empty((e_count, width), np.int64), np.zeros(n, np.int64))
    drop_tok = np.empty(t_count * k + 1, np.int32)
    cache = np.empty((t_count, C_NODE + 2 * cached), np.int64)
    alt_node = np.empty(t_count, np.int64)
    work = (np.empty(t_count + 1, np.int64), np.empty(t_count + 1, np.int64), np.zeros(t_count + 1, np.bool_))
    stats[:] = 0
    unit = _start(v, st, p, demand, k, drop_red, cache, hold, drop_tok)
    converged = _sweeps(sweeps, np.int64(eps * unit), capn, v, st, p, drop_red, cache, alt_node, hold, drop_tok,
                        work, stats)
    _settle(capn, demand, v, st, p, drop_red, cache, alt_node, hold, drop_tok, work, stats)
    objective, dual = _collect(s, scale, demand, cap, v, st, p, drop_red, cache, hold, out, stats)
    for a in range(n):
        prices[a] = p[a] / scale
    stats[S_CONVERGED] = 1 if converged else 0
    cert[C_DUAL] = dual
    cert[C_OBJECTIVE] = objective
    cert[C_DROP] = drop_red / scale
    cert[C_UNIT] = unit / scale


@njit(cache=True)
def _pooled_prices(scores, scale, fixed, demand, cap, k, eps, sweeps, cached, ratio, min_tokens, slack, shrink):
    """Starting prices ``[E + 1]`` for every group from a pooled subsample: every ``ratio``-th token of every group
    as one problem, its capacities scaled to its size, solved coarse to fine (each level ``ratio`` times larger,
    the smallest at least ``min_tokens``, started from the level below lowered by ``slack`` times the mean unit
    value). Prices of one workload's groups are close, and an auction started near them needs a fraction of the
    sheds of a cold start."""
    g_count, t_count, e_count = scores.shape
    prices = np.zeros(e_count + 1)
    levels = 0
    r = ratio
    while g_count * (t_count // r) >= min_tokens and r < t_count:
        levels += 1
        r *= ratio
    unit = 0.0
    for level in range(levels, 0, -1):
        r = ratio ** level
        per = (t_count + r - 1) // r
        n = g_count * per
        sub = np.empty((n, e_count), scores.dtype)
        sub_fixed = np.empty((n, fixed.shape[2]), np.int64)
        sub_demand = np.empty(n, np.int64)
        for g in range(g_count):
            for i in range(per):
                sub[g * per + i] = scores[g, i * r]
                sub_fixed[g * per + i] = fixed[g, i * r]
                sub_demand[g * per + i] = demand[g, i * r]
        sub_cap = np.empty(e_count, np.int64)
        for e in range(e_count):
            total = 0
            for g in range(g_count):
                total += cap[g, e]
            sub_cap[e] = (total * per + t_count - 1) // t_count
        start = np.empty(e_count + 1)
        for e in range(e_count + 1):
            start[e] = max(prices[e] * shrink - slack * unit, 0.0)
        out = np.empty((n, k), np.int64)
        stats = np.zeros(STATS, np.int64)
        cert = np.zeros(CERT)
        auction_group(sub, scale, sub_fixed, sub_demand, sub_cap, k, eps, sweeps, cached, out, start, stats, cert)
        prices = start
        unit = cert[C_UNIT]
    for e in range(e_count + 1):
        prices[e] = max(prices[e] * shrink - slack * unit, 0.0)
    return prices, levels


@njit(cache=True)
def auction_groups(scores, scale, fixed, demand, cap, k, eps, sweeps, cached, warm, ratio, min_tokens, slack, shrink,
                   out, prices, stats, cert):
    """:func:`auction_group` over the groups of ``scores`` ``[G, T, E]`` (``fixed`` ``[G, T, R]``, ``demand``
    ``[G, T]``, ``cap`` ``[G, E]``; outputs ``[G, T, k]``, ``[G, E + 1]``, ``[G, STATS]``, ``[G, CERT]``).
    ``prices`` holds starting prices on entry (0 = cold). With ``warm`` and where no group has more room than
    demand (then any prices at which every expert is exactly full and every token best-responds are optimal, so
    a start above a group's own optimum costs nothing), every group starts from pooled prices
    (:func:`_pooled_prices`); returns the number of pooled levels solved."""
    g_count = scores.shape[0]
    levels = 0
    if warm:
        tight = True
        for g in range(g_count):
            if cap[g].sum() > demand[g].sum():
                tight = False
        if tight:
            pooled, levels = _pooled_prices(scores, scale, fixed, demand, cap, k, eps, sweeps, cached, ratio,
                                            min_tokens, slack, shrink)
            if levels > 0:
                for g in range(g_count):
                    prices[g] = pooled
    for g in range(g_count):
        auction_group(scores[g], scale, fixed[g], demand[g], cap[g], k, eps, sweeps, cached, out[g], prices[g],
                      stats[g], cert[g])
    return levels


@njit(cache=True)
def greedy_first(scores, capacity, out):
    """MaxScore's stage 1 by its definition, a loop over the tokens in order: token ``t`` of group ``g`` takes its
    best expert that still has room after tokens ``0..t-1`` chose (first among equals; none when every expert is
    full or its score is ``-inf``). ``scores`` float ``[G, T, E]``, ``out`` int64 ``[G, T]`` (``-1``: none).
    Returns the number of tokens that did not get their top expert (the first among equals)."""
    g_count, t_count, e_count = scores.shape
    load = np.zeros(e_count, np.int64)
    diverted = 0
    for g in range(g_count):
        load[:] = 0
        for t in range(t_count):
            best = -np.inf
            at = -1
            top = -np.inf
            top_at = -1
            for e in range(e_count):
                x = scores[g, t, e]
                if x > top:
                    top = x
                    top_at = e
                if load[e] < capacity and x > best:
                    best = x
                    at = e
            out[g, t] = at
            if at >= 0:
                load[at] += 1
            if at != top_at:
                diverted += 1
    return diverted
