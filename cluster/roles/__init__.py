"""The driver's handle on each Ray role (rollout pool, scorers, learner group, teacher), the one
factory that starts them, the weight path between learner and engines, and the stream -> score
-> take path every command uses."""
