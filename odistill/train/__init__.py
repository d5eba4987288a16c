"""The training loop: :func:`~odistill.train.trainer.distill` and what it is made of.

    config       DistillConfig (help text and sections in field metadata), PRESETS
    schedules    learning-rate schedules (shared with the lab bench's SFT)
    loggers      where the per-step history goes (progress bar, JSON lines, trackers, callbacks)
    data         prompts and reference completions from a dataset
    checkpoint   the one atomic folder writer, training checkpoints, resuming, save_student
    lora         LoRA students through PEFT: wrap, save and restore the adapter, merge it
    sharding     FSDP2 (fully_shard) students and teachers: settings, sharding, gathering the full state
    runtime      the accelerator and the CPU thread policy
    steps        the named steps of one optimizer step and the TrainState they share
    trainer      distill(): set up, then a short loop of those steps

It imports the core and nothing else of odistill.
"""
