"""The training core every stage shares (the online learner, and the offline SFT, reward-model and DPO
stages): the DeepSpeed model engine and `load_frozen` (engine.py), the non-finite guard (guard.py),
log-probs of taken tokens (logprobs.py), pure losses (losses.py, pg_losses.py), micro-batches,
learning-rate schedules (schedule.py) and durable checkpoints (checkpoint.py).

No sockets, no coordinator: nothing here imports tiller.learner, tiller.actors, tiller.protocol or
tiller.cli (tests/test_layers.py holds that)."""
