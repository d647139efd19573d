"""jrm_engine: Joint Reward Modeling (arXiv 2602.07533) — train and serve visual reward models."""

__version__ = "0.1.0"
