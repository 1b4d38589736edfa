"""Grid files for ``harness calibrate`` (harness/grid.py): parsing, expansion, errors. No torch."""

from __future__ import annotations

import json

import pytest

from harness.grid import expand, load_grid
from planner.errors import PlannerError


def test_the_ci_grid_is_specs_times_values_in_file_order():
    jobs = expand(load_grid("ci"))
    assert len(jobs) == 12
    first = [(m, s.method, s.zero_stage, n, s.grad_ckpt) for m, s, n in jobs[:4]]
    assert first == [
        ("llama-2-7b-tiny", "lora", 0, 1, True),
        ("llama-2-7b-tiny", "lora", 0, 2, True),
        ("llama-2-7b-tiny", "lora", 3, 1, True),
        ("llama-2-7b-tiny", "lora", 3, 2, True),
    ]
    assert sum(1 for _, s, _ in jobs if not s.grad_ckpt) == 4
    assert {s.seq_len for _, s, _ in jobs} == {128} and {s.micro_batch_size for _, s, _ in jobs} == {4}


def test_a_json_grid_with_a_repeated_spec_runs_it_once(tmp_path):
    path = tmp_path / "g.json"
    block = {"base": {"model": "gqa-tiny", "zero": 2}, "vary": {"method": ["lora", "full"]}}
    path.write_text(json.dumps({"name": "g", "run": {"steps": 1}, "blocks": [block, block]}))
    grid = load_grid(str(path))
    assert grid.run.steps == 1 and len(expand(grid)) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nblocks:\n  - base: {model: 7b-tiny, foo: 1}\n", "block 0: unknown option 'foo'"),
        ("name: x\nblocks: [\n", "not valid YAML"),
        ("name: x\nblocks:\n  - base: {model: 99b}\n", "block 0: unknown model '99b'"),
        ("name: x\nblocks:\n  - base: {model: 7b-tiny, zero: 7}\n", "block 0: zero: Input should be less than or equal to 3"),
        ("name: x\nblocks:\n  - base: {method: lora}\n", "block 0 names no model"),
        ("name: x\nblocks: []\n", "blocks"),
    ],
)
def test_bad_grid_files_are_one_line_errors_that_say_where(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PlannerError, match="grid .*bad.yaml") as err:
        load_grid(str(path))
    assert message in str(err.value)


def test_an_unknown_grid_name_lists_the_known_ones():
    with pytest.raises(PlannerError, match="known grids: ci, cpu"):
        load_grid("nope")


def test_every_spec_of_the_trace_grid_is_a_committed_record():
    """``python -m harness.trace_grid`` resumes with nothing to do: each of its 38 specs (a block
    that leaves out the micro batch takes plan's 8) is one of data/measurements/trace's records."""
    from harness.cli import trace_spec
    from harness.trace_grid import extra_grid, fsdp_grid, single_gpu_grid
    from planner.catalog import data_dir, find_model
    from planner.schema.records import read_measurements

    done = {(m.model, m.spec) for m in read_measurements(data_dir() / "measurements" / "trace")}
    jobs = single_gpu_grid(["llama-2-7b", "llama-2-13b", "llama-2-70b"]) + extra_grid() + fsdp_grid(["llama-2-7b", "llama-2-70b"])
    specs = [(model, trace_spec(find_model(model), **kw)) for model, kw in jobs]
    assert len(specs) == 38 and all(s in done for s in specs)
    assert {s.micro_batch_size for m, s in specs if m == "llama-3.2-1b"} == {8, 1, 2}
