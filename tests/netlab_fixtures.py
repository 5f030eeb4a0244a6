"""The ``netlab`` fixture: a :class:`tests.netlab.Lab` removed after the test.

A machine that cannot build namespaces (not root, a tool missing) fails the test with the
reason: CI runs as root with the tools installed by ``.ci/run``, so a skip would only hide
a broken setup.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.netlab import Lab, LabError


@pytest.fixture
def netlab() -> Iterator[Lab]:
    try:
        lab = Lab()
    except LabError as exc:
        pytest.fail(f"cannot build network namespaces here: {exc}", pytrace=False)
    with lab:
        yield lab
