#!/bin/bash
# GIN A/B (results/cpu-gin-ab/README.md, its rule fixed before the runs), by results/cpu-ab.sh. Run from the
# repository root.
exec bash results/cpu-ab.sh gin --gin-prob 0.5
