"""Running a training: the train loop, its run folder, lock, resume, device, processes, checkpoints, loggers."""
