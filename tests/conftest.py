"""Import shim only (the lead owns this file): until `pip install -e .` maps them, register the top-level
`kernels/` and `export/` folders as `jrm_engine.kernels` / `jrm_engine.export`, as pyproject's wheel.packages does."""
import importlib.util
import sys
from pathlib import Path

import jrm_engine

_ROOT = Path(__file__).resolve().parents[1]
for _name in ("kernels", "export"):
    _full = f"jrm_engine.{_name}"
    _init = _ROOT / _name / "__init__.py"
    if _full in sys.modules or not _init.is_file():
        continue
    try:
        importlib.import_module(_full)  # already installed
    except ModuleNotFoundError:
        _spec = importlib.util.spec_from_file_location(_full, _init, submodule_search_locations=[str(_init.parent)])
        _module = importlib.util.module_from_spec(_spec)
        sys.modules[_full] = _module
        setattr(jrm_engine, _name, _module)
        _spec.loader.exec_module(_module)
