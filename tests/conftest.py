import pytest

from tests.backends import get_backend


@pytest.fixture(params=["torch", "jax"])
def backend(request):
    return get_backend(request.param)
