#!/bin/bash
# Twice the pasted lesions on the release's position towards Br35H (README.md here, its rule fixed before the runs),
# by the shared chain: the replay check, then per seed --paste-prob 0.3 against 0.6, scored, stopping at a seed
# whose tumors found at 5% false alarms do not rise. Run from the repository root.
bash results/cpu-healthy-only-ab.sh paste-dose paste06 --paste-prob 0.6
