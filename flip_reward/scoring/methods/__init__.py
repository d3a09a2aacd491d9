"""One module per scoring method, each with a pure `prepare` (tokenizer and context length only:
no engine) and an async `run` that sends the prepared prompts to an engine.

`run` returns, per prepared item, an ItemResult or the exception its engine call raised; the
Scorer (flip_reward/scoring/scorer.py) turns those into per-item errors and keeps the metrics."""
