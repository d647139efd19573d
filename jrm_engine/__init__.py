"""jrm_engine: Joint Reward Modeling (arXiv 2602.07533) — train and serve visual reward models."""

__version__ = "0.1.0"

from pathlib import Path as _Path

# In a source checkout kernels/ and export/ sit beside this package (the wheel installs them inside it as
# jrm_engine.kernels / jrm_engine.export); let `python -m jrm_engine.X` from the checkout find them the same way.
_checkout = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).parent / "kernels").is_dir() and (_checkout / "kernels" / "__init__.py").is_file():
    __path__.append(str(_checkout))
