"""Implicit reparameterization gradients for Pyro.

Distributions here are ``has_rsample`` Pyro distributions whose samples carry pathwise
gradients computed by implicit differentiation of their CDF (Figurnov, Mohamed and Mnih, 2018).
"""

from . import special
from ._implicit import implicit_reparameterize
from .mixture import MixtureSameFamily
from .rice import Rice
from .truncated import TruncatedDistribution
from .truncated_normal import TruncatedNormal

__all__ = [
    "MixtureSameFamily",
    "Rice",
    "TruncatedDistribution",
    "TruncatedNormal",
    "implicit_reparameterize",
    "special",
]
__version__ = "0.1.0"
