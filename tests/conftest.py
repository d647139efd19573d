import importlib.abc
import importlib.util
import sys
from pathlib import Path

# tests/helpers.py is imported as a plain module by the tests.
sys.path.insert(0, str(Path(__file__).parent))

# Import shim (export helper): until `pip install -e .` maps them, the top-level `kernels/` and `export/` folders
# import as `jrm_engine.kernels` / `jrm_engine.export`, as pyproject's wheel.packages does. The finder sits last on
# sys.meta_path, so an installed package always wins, and it loads nothing until imported.
_ROOT = Path(__file__).resolve().parents[1]


class _TopLevelSubpackages(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.partition(".")
        init = _ROOT / name / "__init__.py"
        if package != "jrm_engine" or name not in ("kernels", "export") or not init.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(init.parent)])


if not any(isinstance(f, _TopLevelSubpackages) for f in sys.meta_path):
    sys.meta_path.append(_TopLevelSubpackages())
