"""Fit the rational approximations of I1(x)/I0(x) used by ``pyro_implicit.special.bessel_ratio``.

    python tests/reference/make_bessel_ratio_rational.py 8 100   # float32: degree 8 on [0, 100]
    python tests/reference/make_bessel_ratio_rational.py 14 40   # float64: degree 14 on [0, 40]

Form: :math:`r(x) \\approx x P(y)/Q(y)` with :math:`y = x/x_0`, :math:`\\deg P = n`,
:math:`\\deg Q = n + 1`, :math:`Q(0) = 1`. Loeb's iteration: weighted linear least squares of
:math:`x P - r Q` with weights :math:`1/(\\min(r, 1 - r) Q_{\\rm previous})`, so that the relative
errors of both :math:`r` and :math:`1 - r` are balanced, on 500 Chebyshev-spaced points in
:math:`\\sqrt{x}`, in mpmath at 90 digits (the monomial basis is ill-conditioned). Prints the
coefficients and the maximal relative errors on a finer grid, in exact arithmetic.
"""

import sys

import mpmath as mp
import numpy as np

mp.mp.dps = 90


def ratio(x):
    return mp.besseli(1, x) / mp.besseli(0, x)


def fit(n, x0, points=500, iterations=8):
    x0 = mp.mpf(x0)
    xs = [x0 * ((1 - mp.cos(mp.pi * (k + 0.5) / points)) / 2) ** 2 for k in range(points)]
    rs = [ratio(x) for x in xs]
    q_previous = [mp.mpf(1)] * points
    for _ in range(iterations):
        a, b = mp.matrix(points, 2 * n + 2), mp.matrix(points, 1)
        for i, (x, r) in enumerate(zip(xs, rs, strict=True)):
            y, w = x / x0, 1 / (min(r, 1 - r) * q_previous[i])
            for k in range(n + 1):
                a[i, k] = w * x * y**k
            for k in range(1, n + 2):
                a[i, n + k] = -w * r * y**k
            b[i] = w * r
        solution, _ = mp.qr_solve(a, b)
        p = [solution[k] for k in range(n + 1)]
        q = [mp.mpf(1)] + [solution[n + k] for k in range(1, n + 2)]
        q_previous = [mp.polyval(q[::-1], x / x0) for x in xs]
    return p, q


def max_errors(p, q, x0):
    grid = np.concatenate([np.linspace(1e-6, x0, 3000), np.geomspace(1e-8, x0, 500)])
    err_r = err_c = 0
    for x in grid:
        x = mp.mpf(x)
        r = ratio(x)
        approx = x * mp.polyval(p[::-1], x / x0) / mp.polyval(q[::-1], x / x0)
        err_r = max(err_r, abs(approx / r - 1))
        err_c = max(err_c, abs((1 - approx) / (1 - r) - 1))
    return err_r, err_c


if __name__ == "__main__":
    n, x0 = int(sys.argv[1]), float(sys.argv[2])
    p, q = fit(n, x0)
    print("P =", ", ".join(mp.nstr(v, 20) for v in p))
    print("Q =", ", ".join(mp.nstr(v, 20) for v in q))
    err_r, err_c = max_errors(p, q, x0)
    print(f"max relative error of r, 1 - r: {float(err_r):.2e}, {float(err_c):.2e}")
