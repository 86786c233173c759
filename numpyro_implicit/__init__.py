"""Implicit reparameterization gradients for NumPyro.

Distributions here are NumPyro distributions that list every parameter in
``reparametrized_params``, whose samples carry pathwise gradients computed by implicit
differentiation of their CDF (Figurnov, Mohamed and Mnih, 2018).
"""

from . import special
from ._implicit import implicit_reparameterize
from .rice import Rice

__all__ = ["Rice", "implicit_reparameterize", "special"]
__version__ = "0.1.0"
