"""Time plan QA per patient after the model is loaded (docs/results.md, "Plan QA calibration").

    python scripts/qa_speed.py --model models/openkbp-mae-cdm --plans CACHE [--patients 10] [--report]

Per patient: reading the plan from the source, then QA (prediction of the achievable dose,
criteria on plan and prediction, intervals, flags) and, with --report, the report's figures (DVH and
three views with their slice stacks). Wall-clock and process CPU seconds.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--plans", required=True)
    ap.add_argument("--patients", type=int, default=10)
    ap.add_argument("--protocol", default="openkbp-clinical")
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args()
    import torch

    from dosepred.qa.check import QAChecker, open_plans

    chk = QAChecker(a.model, a.protocol, 0.9)
    writer = None
    if a.report:
        import tempfile

        from dosepred.qa.report import QAReportWriter

        writer = QAReportWriter(tempfile.mkdtemp(), chk)
    rows = []
    it = open_plans(a.plans)
    for i in range(a.patients + 1):
        t0 = time.perf_counter()
        try:
            p = next(it)
        except StopIteration:
            break
        t1, c1 = time.perf_counter(), time.process_time()  # reading: wall only
        pq, pred, plan = chk.check(p)
        t2, c2 = time.perf_counter(), time.process_time()
        if writer is not None:
            writer.add(plan, pred, pq)
        t3, c3 = time.perf_counter(), time.process_time()
        if i == 0:
            continue  # warm-up (first call of the network)
        rows.append((t1 - t0, t2 - t1, c2 - c1, t3 - t2, c3 - c2))
    r = np.array(rows)
    print(f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load average "
          f"{os.getloadavg()[0]:.1f}, {len(rows)} patients after one warm-up patient")
    for k, name in enumerate(("read (wall)", "qa (wall)", "qa (cpu)", "report figures (wall)",
                              "report figures (cpu)")):
        if k >= 3 and writer is None:
            continue
        print(f"{name:24s} median {np.median(r[:, k]):6.2f} s   max {r[:, k].max():6.2f} s")


if __name__ == "__main__":
    main()
