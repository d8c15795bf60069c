"""Celo2 tests run torch single-threaded, as the meta-training tests do (their fixture, reused): the tensors
are tiny, and on a loaded machine intra-op threads only wait for each other."""

from tests.meta.conftest import _one_thread  # noqa: F401  (autouse fixture)
