"""README examples run from the checkout root, where the source tree's `jrm_engine/` shadows the installed package
(which alone holds the compiled `_runtime`): the import and the runtime Scorer example must work there too."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from test_export import FP32_TOL, aoti_package, checkpoint, small_model  # noqa: F401  (fixtures)
from test_scoring import images, torch_scorer  # noqa: F401  (fixture)
from test_scoring_runtime import TEXTS, runtime_package  # noqa: F401  (fixture)

CHECKOUT = Path(__file__).resolve().parent.parent

README_EXAMPLE = """
import json, sys
import numpy as np
import jrm_engine, jrm_engine._runtime
from jrm_engine.scoring import Scorer
package, images_file = sys.argv[1], sys.argv[2]
arrays = np.load(images_file)
texts = json.loads(sys.argv[3])
with Scorer.load(package, backend="runtime", max_batch=4, max_delay_ms=2) as rt:
    futures = [rt.submit(s, t, e) for s, t, e in zip(arrays["sources"], texts, arrays["edited"])]
    rewards = [f.result(timeout=120) for f in futures]
print(json.dumps({"package_file": jrm_engine.__file__, "rewards": rewards}))
"""


def run_from_checkout_root(*args: str) -> subprocess.CompletedProcess:
    # `python -c` puts the current folder first on sys.path, exactly as a user's shell in the checkout does.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, *args], cwd=CHECKOUT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_runtime_imports_from_the_checkout_root():
    done = run_from_checkout_root("-c", "import jrm_engine, jrm_engine._runtime; print(jrm_engine.__file__)")
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).resolve() == CHECKOUT / "jrm_engine" / "__init__.py"


def test_readme_runtime_example_from_the_checkout_root(runtime_package, torch_scorer, tmp_path):  # noqa: F811
    sources, edited = images(3, 56, 20), images(3, 56, 21)
    texts = TEXTS[:3]
    np.savez(tmp_path / "images.npz", sources=np.stack(sources), edited=np.stack(edited))
    done = run_from_checkout_root("-c", README_EXAMPLE, str(runtime_package), str(tmp_path / "images.npz"),
                                  json.dumps(texts))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(result["package_file"]).resolve().is_relative_to(CHECKOUT)
    np.testing.assert_allclose(result["rewards"], torch_scorer.score(sources, texts, edited), atol=FP32_TOL, rtol=0)
