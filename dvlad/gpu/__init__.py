"""GPU discovery: NVML where a driver exists, a recorded topology (fixture) where it does not."""
