"""Opening and reading feeds; one worker process per stream."""
