"""``mulo eval``'s held-out presets (the memorizable ``cpu``/``quick`` presets live in :mod:`mulo.evaluation`).

* :mod:`mulo.eval.heldout` — ``nm`` / ``nm_quick``: width/depth/horizon sweeps and the OOD LM on data that
  cannot be memorized, scored on held-out data; baselines tuned at the base task and transferred, each with
  a constant lr and with warmup-cosine; learned optimizers with and without the schedule.
* :mod:`mulo.eval.models` — ``models`` / ``models_quick``: plain ``torch.nn`` models (GPT-style byte LM, a
  small CNN, a small ViT) converted by :func:`mulo.mup.prepare` for MuLO, against AdamW on the model as
  written (tuned lr, constant and warmup-cosine); held-out loss and wall time per step.
* :mod:`mulo.eval.common` — schedules, the training loop with its metrics and timings, tuning, rows.
"""
