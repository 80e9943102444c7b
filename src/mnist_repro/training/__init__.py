"""Training: the Accelerate loop (train), its launcher and device checks (launch), data on the
device and its batched augmentation (device_data, augment), resume state (checkpoint),
the run file (summary), the notebooks' data path (published_path), the speed levers (speed)
and the benchmark."""
