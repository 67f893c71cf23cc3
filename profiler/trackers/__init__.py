"""What a measurement reads: step times, device memory (allocator, NVML), the tensor footprint,
and the environment a run measured on. Measuring code returns values and never prints."""
