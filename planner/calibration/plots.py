"""The calibration scatter: the planner against real runs, with the residual band
(``python -m planner.calibration plot --out docs/calibration.png``)."""

from __future__ import annotations

from pathlib import Path

from planner.render.plots import calibration_figure, save
from planner.schema.calibration import PEAK_RESIDUAL


def main(argv: list[str] | None = None) -> int:
    """``python -m planner.calibration plot [RECORDS] [CALIBRATION] --out FILE.png``: the
    planner against real runs (default: the committed CPU runs and their calibration)."""
    import argparse

    from planner.catalog import find_model, load_calibration
    from planner.estimate.memory import gpu_memory
    from planner.schema.records import RunResult, read_measurements

    parser = argparse.ArgumentParser(prog="python -m planner.calibration plot", description=main.__doc__)
    parser.add_argument("records", nargs="?", default="data/measurements/run/cpu.jsonl")
    parser.add_argument("calibration", nargs="?", default="cpu")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    cal = load_calibration(args.calibration)
    points = []
    for m in read_measurements(Path(args.records)):
        if isinstance(m.result, RunResult):
            pred = gpu_memory(find_model(m.model), m.spec, cal)
            group = f"{m.spec.method}, ZeRO-{m.spec.zero_stage}"
            points.append((float(m.result.peak_bytes), float(pred.phases[m.result.peak_phase].total), group))
    res = cal.residuals.get(PEAK_RESIDUAL) if cal.residuals else None
    band = res.p90_rel if res is not None else None
    fig = calibration_figure(points, band, f"planner ({cal.id}) vs {len(points)} real DeepSpeed runs on CPU, peak live tensors")
    print(save(fig, args.out))
    return 0


