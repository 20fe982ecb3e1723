"""Background runs: submit, the worker's slices and steps, events, the queue."""
