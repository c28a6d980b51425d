"""Wire types: what the driver, the actors and the learner pass to each other.

`samples` holds the sampled data (`SamplingSpec`, `Sample`, `Group`); `weights` the
weight-sync plan both ends of a broadcast compute alike (`TensorMeta`, `plan_buckets`) and the
standalone process group it runs over; `errors` the `RunFailed` a learner rank raises and the
CLI reports in one line; `disk_errors` a write the file system refused (a full disk, a lost
permission), named in that line. This is the only part of `cluster` that `actors/` and
`learner/` may import, and it imports no other part of the project and nothing heavy at import
time (tests/test_layout.py enforces both).
"""
