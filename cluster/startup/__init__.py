"""Before anything runs: connecting to Ray (with the inputs loading beside it), the placement plan
on the live cluster, recipe -> actor specs, the checks."""
