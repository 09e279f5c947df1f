"""A tiny multimodal config (seconds on CPU): the MNIST-caption construction, few steps."""
from experiments.configs import multimodal_mnist


def get_config():
    c = multimodal_mnist.get_config()
    c.data.n_train = 600
    c.data.n_test_normal = 200
    c.data.n_per_kind = 60
    c.detector.update(dict(embed_dim=8, hidden=64, encoder_steps=150, diffusion_steps=300,
                           gate_steps=40, batch_size=128, num_draws=2))
    return c
