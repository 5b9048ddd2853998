"""Multitask fine-tuning on SST, Quora and STS: data, batching, model, training and predictions."""
