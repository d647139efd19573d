"""Benchmarks import the package from the checkout and `jrm_engine.kernels` from `kernels/` until it is installed."""
import importlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

try:
    importlib.import_module("jrm_engine.kernels")
except ModuleNotFoundError:
    _spec = importlib.util.spec_from_file_location("jrm_engine.kernels", ROOT / "kernels" / "__init__.py",
                                                   submodule_search_locations=[str(ROOT / "kernels")])
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["jrm_engine.kernels"] = _module
    _spec.loader.exec_module(_module)
