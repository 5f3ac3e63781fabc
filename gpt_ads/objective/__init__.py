"""The pre-training objective: softmax / sampled-softmax losses, negatives, per-event NLL, per-user evidence."""
