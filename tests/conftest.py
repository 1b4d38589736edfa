"""Shared fixtures: the catalog and the golden counts from transformers/peft. (The agreement
tables print with ``python -m planner.calibration report``, not here.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.catalog import find_gpu, find_instance, find_model
from planner.schema.catalog import Architecture
from planner.schema.spec import TrainingSpec

GOLDEN = Path(__file__).parent / "golden" / "reference_counts.json"


@pytest.fixture(scope="session")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="session")
def p4de():
    inst = find_instance("p4de.24xlarge")
    return inst, find_gpu(inst.gpu)


def arch(name: str) -> Architecture:
    return find_model(name)


def spec(**kw) -> TrainingSpec:
    return TrainingSpec(**kw)
