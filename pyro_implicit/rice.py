"""The Rice distribution with implicit reparameterization gradients (PyTorch / Pyro)."""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution, constraints
from torch.distributions.utils import broadcast_all
from torch.special import ndtri

from ._implicit import implicit_reparameterize
from .special import (
    bessel_ratio,
    i0e_nonnegative,
    log_marcum_q,
    rice_standard_moments,
)

__all__ = ["Rice"]

_ICDF_STEPS = 40  # safeguarded Newton steps; bisection alone would need ~60 for float64


def _rice_sample_grad(z, nu, sigma):
    r"""Closed-form implicit gradients :math:`(\partial z/\partial\nu, \partial z/\partial\sigma)`.

    With :math:`x = z\nu/\sigma^2` and :math:`r = I_1(x)/I_0(x)`: :math:`\partial z/\partial\nu = r`
    and :math:`\partial z/\partial\sigma = (z - \nu r)/\sigma`, the latter written as
    :math:`(z - \nu + \nu(1 - r))/\sigma` so that it does not cancel when :math:`\nu \gg \sigma`.
    """
    # Parameters usually have fewer elements than z: divide them first.
    ratio, complement = bessel_ratio(z * (nu / sigma**2))
    return ratio, (z - nu) / sigma + (nu / sigma) * complement


class Rice(TorchDistribution):
    r"""The Rice distribution, the law of :math:`|\nu + \sigma(\epsilon_1 + i\epsilon_2)|` for
    standard normal :math:`\epsilon_1, \epsilon_2`, with implicit reparameterization gradients.

    .. math::
        p(z \mid \nu, \sigma) = \frac{z}{\sigma^2}
            \exp\left(-\frac{z^2 + \nu^2}{2\sigma^2}\right) I_0\left(\frac{z\nu}{\sigma^2}\right),
        \qquad F(z) = 1 - Q_1\left(\frac{\nu}{\sigma}, \frac{z}{\sigma}\right),

    where :math:`Q_1` is the Marcum Q-function. :meth:`rsample` draws by the construction above
    and differentiates implicitly, :math:`dz/d\phi = -(\partial F/\partial\phi)/p(z)`, which in
    closed form is :math:`\partial z/\partial\nu = I_1(x)/I_0(x)` and
    :math:`\partial z/\partial\sigma = (z - \nu\,I_1(x)/I_0(x))/\sigma` with
    :math:`x = z\nu/\sigma^2`. For :math:`\nu = 0` this is the Rayleigh distribution.

    :param nu: distance of the underlying complex normal from the origin, :math:`\nu \ge 0`.
    :param sigma: scale of each of its components, :math:`\sigma > 0`.
    """

    arg_constraints = {"nu": constraints.nonnegative, "sigma": constraints.positive}
    support = constraints.positive
    has_rsample = True

    def __init__(self, nu, sigma, validate_args=None):
        self.nu, self.sigma = broadcast_all(nu, sigma)
        super().__init__(self.nu.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(Rice, _instance)
        batch_shape = torch.Size(batch_shape)
        new.nu = self.nu.expand(batch_shape)
        new.sigma = self.sigma.expand(batch_shape)
        super(Rice, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=()):
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            eps = torch.randn((2, *shape), dtype=self.nu.dtype, device=self.nu.device)
            z = torch.hypot(self.nu + self.sigma * eps[0], self.sigma * eps[1])
        return implicit_reparameterize(z, (self.nu, self.sigma), grad=_rice_sample_grad)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return _log_prob(value, self.nu, self.sigma)

    def _log_cdf_sf(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return log_marcum_q(self.nu / self.sigma, value / self.sigma)

    def log_cdf(self, value):
        """Logarithm of the CDF, accurate far into the lower tail."""
        return self._log_cdf_sf(value)[0]

    def log_sf(self, value):
        """Logarithm of the survival function :math:`1 - F`, accurate far into the upper tail."""
        return self._log_cdf_sf(value)[1]

    def cdf(self, value):
        return torch.exp(self.log_cdf(value))

    def icdf(self, value):
        """Quantile function by safeguarded Newton iteration on the log-CDF or log-survival
        function; differentiable in ``value``, ``nu`` and ``sigma`` by implicit differentiation."""
        u = torch.as_tensor(value, dtype=self.nu.dtype, device=self.nu.device)
        if self._validate_args and not torch.all((u >= 0) & (u <= 1)):
            raise ValueError("Rice.icdf: `value` must be a probability in [0, 1]")
        with torch.no_grad():
            z = self.sigma * _standard_icdf(self.nu / self.sigma, u)
        return implicit_reparameterize(
            z, (self.nu, self.sigma, u), cdf=_shifted_cdf, log_prob=_log_prob_of_shifted
        )

    @property
    def mean(self):
        return self.sigma * rice_standard_moments(self.nu / self.sigma)[0]

    @property
    def variance(self):
        return self.sigma**2 * rice_standard_moments(self.nu / self.sigma)[1]


def _shifted_cdf(z, nu, sigma, u):
    """F(z) - u, the standardization whose root is the quantile."""
    return torch.exp(log_marcum_q(nu / sigma, z / sigma)[0]) - u


def _log_prob_of_shifted(z, nu, sigma, u):
    return _log_prob(z, nu, sigma)


def _log_prob(z, nu, sigma):
    # log I0(x) = x + log i0e(x): the exponentials combine into -(z - nu)^2 / (2 sigma^2).
    return (
        torch.log(z)
        - 2 * torch.log(sigma)
        - (z - nu) ** 2 / (2 * sigma**2)
        + torch.log(i0e_nonnegative(z * nu / sigma**2))
    )


def _standard_icdf(a, u):
    """Solve 1 - Q_1(a, b) = u for b >= 0 (no gradient)."""
    a, u = torch.broadcast_tensors(a, u)
    lower = u <= 0.5
    # g(b) = log F(b) - log u, or log(1 - u) - log S(b): increasing in b, root at the quantile.
    target = torch.where(lower, torch.log(u), torch.log1p(-u))
    lo = torch.zeros_like(a)
    # Q_1(a, b) <= exp(-(b - a)^2 / 2) for b >= a bounds the quantile from above.
    hi = a + torch.sqrt(-2 * torch.log1p(-torch.where(lower, 0.5, u))) + 3
    # Start from the Rayleigh quantile for small a, from the normal approximation otherwise.
    rayleigh = torch.sqrt(-2 * torch.log1p(-u))
    b = torch.where(a < 1, rayleigh, torch.sqrt(a * a + 1) + ndtri(u))
    b = torch.where((b > lo) & (b < hi), b, (lo + hi) / 2)
    for _ in range(_ICDF_STEPS):
        log_p, log_q = log_marcum_q(a, b)
        g = torch.where(lower, log_p - target, target - log_q)
        log_density = _log_prob(b, a, torch.ones_like(a))
        slope = torch.exp(log_density - torch.where(lower, log_p, log_q))
        lo = torch.where(g < 0, b, lo)
        hi = torch.where(g < 0, hi, b)
        newton = b - g / slope
        b = torch.where((newton >= lo) & (newton <= hi), newton, (lo + hi) / 2)
    b = torch.where(u <= 0, 0.0, b)
    return torch.where(u >= 1, math.inf, b)
