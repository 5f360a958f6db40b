"""Workers: rollout actors (vLLM) and judge actors. Each connects only to the learner."""
