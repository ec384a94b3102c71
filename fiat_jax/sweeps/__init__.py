"""Sweeps: a resumable grid of runs into results.jsonl (sweep.py) and tables and plots from it (report.py)."""
