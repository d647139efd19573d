"""`make test-sanitize` really runs the runtime's tests under AddressSanitizer + UBSan.

Without these checks a broken harness (the plain extension picked up first on sys.path, or the ASan runtime not
preloaded) would pass every runtime test and find nothing. The Makefile sets JRM_EXPECT_SANITIZER=1; elsewhere
they skip.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.environ.get("JRM_EXPECT_SANITIZER") != "1",
                                reason="only under make test-sanitize")


def test_the_loaded_extension_is_the_sanitized_build():
    from jrm_engine.runtime import _runtime

    # The ASan/UBSan runtimes are DT_NEEDED entries of a -fsanitize build only.
    elf = Path(_runtime.__file__).read_bytes()
    assert b"libasan.so" in elf and b"libubsan.so" in elf, f"{_runtime.__file__} is not the sanitized build"
    with open("/proc/self/maps") as f:
        assert "libasan" in f.read(), "the ASan runtime is not loaded in this process"


def test_a_heap_overflow_in_this_process_setup_is_fatal():
    # Same interpreter and environment as the tests: a write past a malloc'd block must abort with a report.
    code = ("import ctypes\n"
            "buf = ctypes.create_string_buffer(4096)\n"  # > 512 bytes: plain malloc, which ASan tracks
            "ctypes.memset(ctypes.addressof(buf) + 4096, 0, 64)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "heap-buffer-overflow" in proc.stderr, proc.stderr[-2000:]
