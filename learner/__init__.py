"""The learner side: pure GRPO-family losses and advantages, batching, the DeepSpeed ZeRO
engine, checkpoints, and the stream of weights out to the rollout workers."""
