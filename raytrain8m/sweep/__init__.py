"""The K×H grid: the memory model and placement, the sweep's records, the Ray Tune run."""
