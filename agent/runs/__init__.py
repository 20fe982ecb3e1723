"""Background runs: work longer than a request, delivered in slices through a queue."""
