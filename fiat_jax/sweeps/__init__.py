"""Sweeps: a resumable grid of runs into results.jsonl (sweep.py) and a report from it (report.py, built from
summary, tables, comparisons, costs, plots and render)."""
