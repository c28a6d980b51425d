"""What a run leaves behind: `metrics.jsonl`, rollout Parquet, TensorBoard (`run_log`), the PNG
plots (`plots`), and the pure statistics the metrics are computed with (`eval_metrics`)."""
