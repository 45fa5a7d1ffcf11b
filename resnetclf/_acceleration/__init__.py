"""Speed-ups that change how fast the network runs, never what it computes.

- ``devices``: device and autocast precision choice, scoped cuDNN autotuning;
- ``cuda_graphs``: full-batch forward/backward replayed from CUDA graphs;
- ``conv_weight_grad``: CPU weight gradients of small-map convolutions as one
  matrix product over the batch;
- ``bn_folding``: batch norms folded into their convolutions for CPU inference;
- ``compile``: the optional ``torch.compile`` path.
"""
