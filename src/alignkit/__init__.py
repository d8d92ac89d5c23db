"""alignkit: align and post-train language models.

SFT, Bradley-Terry reward models, PPO for RLHF, DPO, GRPO with verifiable rewards, rejection sampling,
distillation and the DeepSeek-R1 multi-stage pipeline, on top of PyTorch and Hugging Face transformers.

Import the parts you need: ``alignkit.losses`` and ``alignkit.advantages`` are pure tensor functions
(torch only); ``alignkit.recipes.<method>.run(config)`` trains.
"""

__version__ = "0.1.0"
