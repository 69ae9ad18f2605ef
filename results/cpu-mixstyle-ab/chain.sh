#!/bin/bash
# MixStyle A/B (results/cpu-mixstyle-ab/README.md, its rule fixed before the runs), by results/cpu-ab.sh. Run from the
# repository root.
exec bash results/cpu-ab.sh mixstyle --mix-styles 0.5
