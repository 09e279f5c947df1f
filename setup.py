"""adiff: diffusion models for anomaly detection and generation, in JAX/Flax."""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10,<0.11",
    "flax>=0.12,<0.13",
    "optax>=0.2,<0.3",
    "orbax-checkpoint>=0.12,<0.13",
    "grain>=0.2,<0.3",
    "tensorflow-datasets>=4.9,<4.10",
    "importlib_resources",
    "array_record",
    "absl-py",
    "chex",
    "ml_collections",
    "diffrax>=0.7,<0.8",
    "numpy",
    "scipy",
    "scikit-learn",
    "pandas",
    "matplotlib",
    "pillow",
    "tensorboardX",
    "pyod",
]

# VideoDetector(motion="flow"): Farneback optical flow from OpenCV (headless build, no GUI libs).
VIDEO_REQUIRES = ["opencv-python-headless>=4.10,<5"]

EXTRAS = {
    "test": ["pytest", "pytest-xdist", "nbclient", "nbformat", "ipykernel"] + VIDEO_REQUIRES,
    "video": VIDEO_REQUIRES,
    # torch pinned exactly: a local CPU wheel here; anything looser downloads several GB.
    "bench": ["pyod", "torch==2.13.0"],
    "colab": ["jupyter", "ipykernel"],
}

setup(
    name="adiff",
    version="0.1.0",
    description="Diffusion-model anomaly detection and anomaly generation in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["adiff", "adiff.*", "experiments", "experiments.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    license="Apache-2.0",
)
