"""lliejax: diffusion-based low-light image enhancement in JAX/Flax."""
import setuptools

INSTALL_REQUIRES = [
    "jax>=0.10,<0.11",
    "flax>=0.12,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12,<0.13",
    "ml_collections>=1.0,<2",
    "clu==0.0.12",
    "tensorflow-datasets>=4.9.10,<4.10",
    "grain>=0.2,<0.3",
    "array_record>=0.8",
    "tensorflow-cpu>=2.18,<3",
    "tensorboard>=2.18,<3",
    "numpy>=1.26,<3",
    "pillow>=10",
    "scikit-image>=0.24,<0.27",
    "tqdm>=4.60",
]

EXTRAS = {
    # Optional PyTorch interop (checkpoint import/export, cross-checks). The CPU wheel only.
    "torch": ["torch==2.13.0", "einops"],
    "test": ["pytest>=8", "pytest-xdist>=3", "torch==2.13.0", "scikit-video>=1.1.11"],
}

setuptools.setup(
    name="lliejax",
    version="0.1.0",
    description="Diffusion-based low-light image enhancement (Entropy-SDE, AnlightenDiff, ReDDiT) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["lliejax", "lliejax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "lliejax-train=lliejax.main:run",
            "lliejax-eval=lliejax.main:run_eval",
            "lliejax-enhance=lliejax.enhance:run",
            "lliejax-demo=lliejax.demo:run",
            "lliejax-convert=lliejax.convert:run",
            "lliejax-crosscheck=lliejax.crosscheck:run",
        ]
    },
)
