#!/usr/bin/env bash
# The runtime's parts of the device session alone (build, tiny CUDA check, 3B package, runtime table): run_all.sh
# with JRM_PARTS preset; its environment variables apply (JRM_DEVICE=cpu rehearses, JRM_AOTI_DIR skips the compile).
exec env JRM_PARTS="${JRM_PARTS:-build tiny package3b runtime}" bash "$(dirname "$0")/run_all.sh"
