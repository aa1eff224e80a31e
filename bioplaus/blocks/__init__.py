"""Building blocks assembled into models: dense gated blocks (GLU channel mixers, gated recurrent and
gated-linear-attention token mixers, pre-norm residual wrappers) and spiking blocks (spiking
self-attention variants, spiking MLPs, spiking RWKV). Blocks are nn.Modules over the ops in
`bioplaus.kernels`; models in `bioplaus.models` stack them into layered networks."""
