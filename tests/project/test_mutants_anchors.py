"""bench/mutants.py cannot rot silently: every mutant's anchor text is in its file exactly once."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _mutants():
    spec = importlib.util.spec_from_file_location("bench_mutants", ROOT / "bench" / "mutants.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module.MUTANTS


@pytest.mark.parametrize("mutant", _mutants(), ids=lambda m: m.name)
def test_every_mutant_anchor_is_found_exactly_once(mutant):
    text = (ROOT / mutant.file).read_text()
    for old, new in mutant.edits:
        assert text.count(old) == 1, f"{mutant.name}: anchor found {text.count(old)} times in {mutant.file}"
        assert old != new
    for test in mutant.tests:
        assert (ROOT / test.split("::")[0]).is_file(), f"{mutant.name}: {test} does not exist"
