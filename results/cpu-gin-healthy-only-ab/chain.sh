#!/bin/bash
# GIN on the release's position towards Br35H (README.md here, its rule fixed before the runs), by the shared chain:
# per seed the baseline (the weight-averaging A/B's recipe, --paste-prob 0.3) against --gin-prob 0.5 on top, scored,
# stopping at a seed whose tumors found at 5% false alarms do not rise. Run from the repository root.
bash results/cpu-healthy-only-ab.sh gin-healthy-only gin-paste --paste-prob 0.3 --gin-prob 0.5
