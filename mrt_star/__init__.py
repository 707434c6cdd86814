"""mrt-star: Meta Reinforcement Fine-Tuning (STaR variant) as a toolkit."""

__version__ = "0.1.0"
