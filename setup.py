"""Install the gating engine: the ``gating`` library and the ``kernels`` Triton package."""

from setuptools import find_packages, setup

setup(
    name="gating-engine",
    version="0.1.0",
    description="Dynamic runtime channel gating for CNNs, with Triton kernels that skip gated-off work",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["gating", "gating.*", "kernels", "kernels.*"]),
    install_requires=[
        "torch>=2.4,<3",
        "torchvision>=0.19",
        "triton>=3.0,<4; platform_system == 'Linux'",
        "numpy>=1.24,<3",
        "tqdm>=4.60",
        "scipy>=1.10",
        "safetensors>=0.4",
        "matplotlib>=3.7",
    ],
    extras_require={
        "dev": [
            "pytest>=7.4",
            "pytest-benchmark>=4.0",
            "hypothesis>=6.80",
            "playwright>=1.40",  # drives the system headless Chromium (apt: chromium-headless-shell)
        ],
    },
    entry_points={"console_scripts": ["gating=gating.cli:run"]},
)
