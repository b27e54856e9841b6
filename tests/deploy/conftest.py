"""Fixtures of the deployment tests."""

from __future__ import annotations

from typing import Any

import pytest
from deploy_helpers import k8s_validate


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Overlay name -> its objects, as `kubectl kustomize` renders them."""
    return {p.name: k8s_validate.render(p) for p in k8s_validate.overlays()}
