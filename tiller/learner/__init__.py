"""The online stage: coordinator (leases, versions, staleness), the learner process, online DPO and
policy-gradient updates, the policy trainer, weight publishing and its server. The DeepSpeed engine,
losses, guard and checkpoint protocol it trains with are the training core's (tiller/training/)."""
