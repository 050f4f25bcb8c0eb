"""Inference engines: V1 FP32 dense decoder, V2 INT4 hybrid-attention decoder, dynamic batching."""
