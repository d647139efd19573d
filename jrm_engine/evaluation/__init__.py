"""Benchmark loaders and metrics: EditReward-Bench (EditScore's and TIGER-Lab's versions), MMRB2 image editing and
the built-in synthetic held-out split. `python -m jrm_engine.evaluate` is the command line over them."""
from .benchmarks import BENCHMARKS, Benchmark, CandidateInput, GroupItem, PairItem, load_benchmark
from .metrics import METRICS, MetricResult
from .scores import check_scores, read_scores, score_candidates, write_scores

__all__ = ["BENCHMARKS", "Benchmark", "CandidateInput", "GroupItem", "PairItem", "load_benchmark", "METRICS",
           "MetricResult", "check_scores", "read_scores", "score_candidates", "write_scores"]
