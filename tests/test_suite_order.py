"""The suite's file order: files start longest first by the recorded durations, so two xdist workers that take whole
files finish together instead of one running the longest file alone at the end."""
from __future__ import annotations

import json
from types import SimpleNamespace

import conftest


def items(*nodeids):
    return [SimpleNamespace(nodeid=n) for n in nodeids]


def test_files_start_longest_first_and_keep_their_tests_in_order(tmp_path, monkeypatch):
    durations = tmp_path / "durations.json"
    durations.write_text(json.dumps({"tests/test_demo.py": 120.0, "tests/test_layers.py": 30.5}))
    monkeypatch.setattr(conftest, "DURATIONS", durations)
    suite = items("tests/test_a.py::t1", "tests/test_layers.py::t1", "tests/test_b.py::t1", "tests/test_demo.py::t1",
                  "tests/test_layers.py::t2[x]", "tests/test_demo.py::t2", "tests/test_a.py::t2")
    conftest._longest_files_first(suite)
    assert [i.nodeid for i in suite] == [
        "tests/test_demo.py::t1", "tests/test_demo.py::t2",        # the longest recorded file
        "tests/test_layers.py::t1", "tests/test_layers.py::t2[x]",
        "tests/test_a.py::t1", "tests/test_a.py::t2", "tests/test_b.py::t1",  # not recorded: last, as collected
    ]


def test_without_a_record_the_collection_order_stays(tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "DURATIONS", tmp_path / "missing.json")
    suite = items("tests/test_b.py::t", "tests/test_a.py::t", "tests/test_b.py::u")
    conftest._longest_files_first(suite)
    # Grouped by file in order of first appearance (pytest collects a file's tests together anyway).
    assert [i.nodeid for i in suite] == ["tests/test_b.py::t", "tests/test_b.py::u", "tests/test_a.py::t"]


def test_the_recorded_durations_name_files_that_exist():
    # A renamed or deleted test file left in the record would only sort nothing; a typo'd path is worth knowing.
    recorded = json.loads(conftest.DURATIONS.read_text())
    assert len(recorded) > 20  # a whole suite's record, not one file's
    missing = [f for f in recorded if not (conftest.REPO / f).is_file()]
    assert not missing, f"tests/durations.json names files that do not exist: {missing}; run `make durations`"
