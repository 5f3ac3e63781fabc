"""Logical axis names. Model code names only these; `config.sharding.rules` maps them to mesh axes.

Parameters and activations use different names so that, e.g., FSDP can shard a parameter's `embed` dimension
while the activations' `act_embed` dimension stays whole.
"""

# Activations.
BATCH = "act_batch"
LENGTH = "act_length"
EMBED = "act_embed"
HEADS = "act_heads"
KV = "act_kv"
MLP = "act_mlp"
VOCAB = "act_vocab"

# Parameters.
P_EMBED = "embed"       # the model width d
P_HEADS = "heads"       # attention heads h
P_KV = "kv"             # per-head width k
P_MLP = "mlp"           # MLP hidden width f
P_VOCAB = "vocab"       # a feature's (padded) vocabulary v
P_FEATURE = "feature"   # a feature's own embedding width e, where it differs from d
P_POSITION = "position" # rows of the position table
P_LAYERS = "layers"     # the scanned layer axis
