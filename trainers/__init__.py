"""Preference optimization for vision-language models: JoMPO, DPO, MPO (and the JoMPO paper's ablations), SFT.

- :mod:`trainers.data`: the canonical preference record, loaders (RLAIF-V, TRL, mDPO) and rejected-image strategies.
- :mod:`trainers.losses`: the loss terms as pure functions of per-row scores; every method is a weight setting.
- :mod:`trainers.logprobs`: all (condition, response) rows of a micro-batch in one forward, per-row summed log-probs.
- :mod:`trainers.trainer`: the training loop (transformers.Trainer), reference log-probs, checkpoints; :mod:`trainers.sft`.
"""
