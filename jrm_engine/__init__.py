"""jrm_engine: Joint Reward Modeling (arXiv 2602.07533) — train and serve visual reward models."""

__version__ = "0.1.0"

from pathlib import Path as _Path

# In a source checkout kernels/ and export/ sit beside this package (the wheel installs them inside it as
# jrm_engine.kernels / jrm_engine.export); let `python -m jrm_engine.X` from the checkout find them the same way.
_here = _Path(__file__).resolve().parent
_checkout = _here.parent
if not (_here / "kernels").is_dir() and (_checkout / "kernels" / "__init__.py").is_file():
    __path__.append(str(_checkout))

    # From the checkout root this source package shadows the installed one, which alone holds the compiled C++
    # runtime (`_runtime`, built by `pip install .`); put the installed package's folder last on __path__ so
    # `jrm_engine._runtime` resolves from any folder while every Python module still comes from the source tree.
    import importlib.machinery as _machinery
    import sys as _sys

    _elsewhere = [p for p in _sys.path if _Path(p or ".").resolve() != _checkout]
    _installed = _machinery.PathFinder.find_spec(__name__, _elsewhere)
    for _folder in (_installed.submodule_search_locations or []) if _installed else []:
        if _Path(_folder).resolve() != _here:
            __path__.append(_folder)
