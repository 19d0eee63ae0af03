"""Shared fixtures: the tiny random-weight Llama of `tests/model_util.py` and engines on it."""

from __future__ import annotations

import pytest

from runtime.engine import Engine
from runtime.model_loader import LoadedModel
from tests.model_util import tiny_model


@pytest.fixture(scope="session")
def tiny() -> LoadedModel:
    return tiny_model()


@pytest.fixture(params=[True, False], ids=["fast", "transformers"])
def engine(tiny, request) -> Engine:
    """Every engine test runs on both forwards: the fast decoder and transformers' own."""
    return Engine(tiny, fast=request.param)
