"""Training: optimizer and schedule, the data loader, checkpoints, the loop."""
