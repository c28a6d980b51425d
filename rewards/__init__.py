"""Pure reward functions (completion text in, float out) and the code sandbox.

Imports nothing of the rest of the project: reward code runs in scorer worker processes and
must stay small and self-contained."""
