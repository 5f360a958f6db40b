"""Evaluation, red-teaming and data generation: `tiller eval`, `tiller redteam`, `tiller rlaif-data`,
`tiller cai-data`. Models answer through the actors' vLLM adapter (`generate.py`); judges come from
`tiller.actors`; nothing here imports the learner."""
