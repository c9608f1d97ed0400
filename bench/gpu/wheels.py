"""The Python packages emtrait needs that the device image lacks, pinned to this venv's versions.

The GPU machine has no network: bench/gpu/wheels.sh downloads these (Python 3.12, manylinux
x86-64 wheels, no dependencies: the closure is computed here) into .whl/, which travels with
the working tree; bench/gpu/run.sh installs them there. The device image's own packages (torch
with CUDA, transformers, peft, pandas, ...) are used as they are.

    python bench/gpu/wheels.py > .whl/requirements.txt
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

# packages of the device image (/work/.library/device/KINDS.md, "Python packages already there")
DEVICE = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn
einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch
mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-ml-py
onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx
optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
# large or GPU-only and not needed by the benchmark (vLLM alone is far over the 64 MiB carry)
SKIP = {"vllm", "sae-lens", "tensorboard", "torch", "triton"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(dist: str) -> list[str]:
    """Names a distribution requires unconditionally (no extras, this platform's markers)."""
    out = []
    for req in metadata.requires(dist) or []:
        name, _, marker = req.partition(";")
        if "extra" in marker:
            continue
        if marker.strip():
            from packaging.markers import Marker

            if not Marker(marker).evaluate({"python_version": "3.12"}):
                continue
        out.append(norm(re.split(r"[ <>=!~\[(]", name.strip(), maxsplit=1)[0]))
    return out


def closure(root: str) -> dict[str, str]:
    """name -> version for everything `root` needs that the device lacks."""
    device = {norm(n) for n in DEVICE} | SKIP
    need: dict[str, str] = {}
    todo = [r for r in requirements(root)]
    while todo:
        name = todo.pop()
        if name in device or name in need:
            continue
        try:
            need[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            print(f"# not installed here, skipped: {name}", file=sys.stderr)
            continue
        todo += requirements(name)
    return need


if __name__ == "__main__":
    for name, version in sorted(closure("emtrait").items()):
        print(f"{name}=={version}")
