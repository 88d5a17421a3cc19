"""What every command runs on: devices and DDP processes, stop signals, progress display."""
