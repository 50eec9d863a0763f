"""Fast matmuls for quantized layers: nnslim's Triton kernels (CUDA), torch's packed-weight ops
(CPU and CUDA), and a per-shape selector that keeps whichever measures fastest."""
