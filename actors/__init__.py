"""Ray actors other than the learner: vLLM rollout workers, reward scorers, and the vLLM
worker extension that receives the learner's weights. Each is a plain class, wrapped with
`ray.remote` where the driver launches it."""
