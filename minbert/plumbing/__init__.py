"""General plumbing shared by the training jobs, nothing BERT-specific: flags, the training loop's
guards and logs, progress lines, precision and device choice, atomic writes, heap trimming."""
