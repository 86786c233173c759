"""Pyro's provenance tracking meets ``torch.autograd.Function``.

``TraceGraph_ELBO`` wraps values downstream of non-reparameterized sample sites in
``pyro.ops.provenance.ProvenanceTensor``. A custom ``autograd.Function`` applied to such a tensor
returns an output without ``grad_fn``: the gradient through it is silently lost. Every Function
of this package is therefore applied through :func:`apply`, which unwraps the inputs, applies
the Function to the plain tensors (whose graph is intact) and re-attaches the provenance.
"""

from __future__ import annotations

from pyro.ops.provenance import extract_provenance, track_provenance


def apply(function, *args):
    """``function.apply(*args)``, keeping both the autograd graph and Pyro's provenance."""
    plain, provenance = extract_provenance(args)
    out = function.apply(*plain)
    return track_provenance(out, provenance) if provenance else out
