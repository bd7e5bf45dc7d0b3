"""Fast path: autograd Functions over the Triton kernels in `kernels/` (installed as vidgan_fast.kernels), and
the modules built from them. One module per op: bank.py (the K discriminators), projection.py (the K fixed
projections), frozen_generator.py (the folded, frozen G_F); engine.py turns a training state into its fast twin,
graphs.py replays its steps as CUDA graphs."""
