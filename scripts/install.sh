#!/usr/bin/env bash
# Create .venv and install dna-vlm with every extra. Idempotent; used by the README quick start and by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch + torchvision as a matching pair: transformers' video processors need torchvision, and a torchvision that
# does not match the installed torch fails to import ("operator torchvision::nms does not exist").
# On a GPU machine, install your CUDA pair first; these pins only apply when nothing is installed yet.
TORCH_PAIR=${DNA_VLM_TORCH_PAIR:-"torch==2.14.1 torchvision==0.29.1"}
python -c "import torch, torchvision" 2>/dev/null || pip install -q $TORCH_PAIR
pip install -q -e ".[all]" $(python -c "import torch, torchvision; print(f'torch=={torch.__version__.split(\"+\")[0]} torchvision=={torchvision.__version__.split(\"+\")[0]}')")
echo "dna-vlm installed in $(pwd)/.venv ($(python -c 'import torch; print("torch", torch.__version__)'))"
