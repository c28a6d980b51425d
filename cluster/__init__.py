"""The driver side, a folder per concern: `cli.py` parses the `aha` command line and dispatches
to `commands/` (one module per command); `roles/` is the driver's handle on each Ray role and
the one factory that starts them; `startup/` connects to Ray and checks before anything starts;
`run/` is the scaffold around the steps (resume, stop, checkpoints, fault injection). Beside
them: `wire` (the types actors and learner share with the driver), `recipe` (schema, loading,
checks, placement), `inputs` (what a run reads) and `output` (what a run leaves).
docs/architecture.md draws the layout; tests/test_layout.py states who may import whom."""
