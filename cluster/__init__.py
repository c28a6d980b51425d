"""The driver side. Its top-level modules are the drivers: the CLI, the GRPO loop, system
start-up, the recipe -> actor specs, and the driver's views of the rollout pool, scorer pool
and learner group. Beside them: `wire` (the types actors and learner share with the driver),
`recipe` (schema, loading, checks, placement), `inputs` (what a run reads) and `output` (what a
run leaves). tests/test_layout.py states who may import whom."""
