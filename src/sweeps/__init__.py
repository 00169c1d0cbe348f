"""The sweep runner behind `python src/sweep.py`: grids and Optuna searches in parallel slots.

Each job is an ordinary `python src/train.py` run in its own process and output dir; this package
decides which jobs run, where (slots, devices, backends) and in what state they ended.
"""
