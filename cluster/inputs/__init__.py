"""What a run reads: prompt datasets and templates (`data`), the built-in synthetic tasks
(`tasks`), the tiny test/demo model (`tiny_model`) and recipe (`tiny_recipe`), its pre-training (`pretrain`), the checks
of a model directory's files (`model_files`), and `prepare`, which makes a recipe's local
inputs exist before any actor starts."""
