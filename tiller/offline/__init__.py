"""The offline stages around the online one: SFT, reward-model training and offline DPO (recipes over
tiller/training/), and the data formats they read (data.py)."""
