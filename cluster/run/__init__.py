"""Around the steps of a training run: the scaffold train, distill and sft share, what a step
records, resume, stop, fault injection."""
