"""Training: the `Trainer` step loop, checkpoints and run state, optimizers, schedules, the resource guard,
DDP launch, and the pretrain / SFT stages that notebooks 03 and 04 call."""
